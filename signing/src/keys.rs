//! Signing keys and their certificates: where a key comes from
//! ([`KeySource`]: a PEM file, PEM text from the environment, later a
//! PKCS#11 token or a KMS), loading it with its X.509 certificate and
//! checking that the two belong together ([`SigningKey`]), and making a new
//! self-signed pair ([`keygen`]).
//!
//! Private key material is never printed: `Debug`/`Display` of every type
//! here shows where a key came from, never its bytes, and errors name the
//! file or variable, never its content. The private key file that
//! [`keygen`] writes is created with mode 0600 from the first instant.
//!
//! Environment (see [`KeyConfig::from_env`]):
//! - `BAKERY_SIGNING_KEY`: a path to a PEM private key, or the PEM text itself;
//! - `BAKERY_SIGNING_CERT`: a path to the PEM certificate, or the PEM text;
//!   defaults to the key path with the extension `.crt`;
//! - `BAKERY_SIGNING_KEY_PASSPHRASE`: the passphrase of an encrypted key.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509Ref, X509};
use sha2::{Digest, Sha256};
use sysupdate::Sha256Digest;

use plumbing::atomic::{commit_all, AtomicFile};

/// Environment variable holding the signing key (path or PEM text).
pub const ENV_KEY: &str = "BAKERY_SIGNING_KEY";
/// Environment variable holding the certificate (path or PEM text).
pub const ENV_CERT: &str = "BAKERY_SIGNING_CERT";
/// Environment variable holding the key's passphrase.
pub const ENV_PASSPHRASE: &str = "BAKERY_SIGNING_KEY_PASSPHRASE";
/// File name of the private key [`keygen`] writes.
pub const KEY_FILE_NAME: &str = "signing.key";
/// File name of the certificate [`keygen`] writes (install it on nodes as
/// `/etc/verity.d/NAME.crt`).
pub const CERT_FILE_NAME: &str = "signing.crt";
/// RSA modulus size [`keygen`] uses.
pub const DEFAULT_RSA_BITS: u32 = 4096;
/// Validity of the certificate [`keygen`] writes. Nothing on the node checks
/// dates (verity.d and the kernel keyring ignore them), but X.509 needs some.
pub const DEFAULT_VALIDITY_DAYS: u32 = 3650;

/// Errors loading or generating keys. None of them contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what} is encrypted and no passphrase was given: set {ENV_PASSPHRASE} \
         (or pass a passphrase) to use it"
    )]
    Encrypted { what: String },
    #[error(
        "{what} could not be decrypted with the given passphrase: wrong passphrase? ({detail})"
    )]
    WrongPassphrase { what: String, detail: String },
    #[error("{what} is not a PEM private key: {detail}")]
    BadKey { what: String, detail: String },
    #[error("{what} is not a PEM X.509 certificate: {detail}")]
    BadCert { what: String, detail: String },
    #[error(
        "the certificate {cert} (subject {subject}) does not belong to {key}: \
         its public key differs; give the certificate that was made for this key"
    )]
    Mismatch {
        key: String,
        cert: String,
        subject: String,
    },
    #[error("{0} is not supported yet: use a PEM key file or {ENV_KEY}")]
    Unsupported(String),
    #[error("no certificate for {key}: {hint}")]
    MissingCert { key: String, hint: String },
    #[error("invalid common name {0:?}: use 1 to 64 printable characters")]
    BadCommonName(String),
    #[error("{path} already exists; keygen never overwrites a key: choose another directory or remove it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the key pair failed: {0}")]
    Generate(ErrorStack),
}

/// Secret bytes (PEM text of a private key, a passphrase). `Debug` shows the
/// length only; the buffer is overwritten with zeros when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s.into_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// Where a signing key comes from. New variants (KMS, …) can be added
/// without changing callers: everything that signs goes through
/// [`SigningKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM private key file (PKCS#8, traditional RSA/EC, or encrypted PKCS#8).
    File(PathBuf),
    /// PEM text handed over directly; `origin` says where it came from
    /// (e.g. "environment variable BAKERY_SIGNING_KEY").
    Pem { origin: String, pem: Secret },
    /// A key on a PKCS#11 token (RFC 7512 URI). Not supported yet.
    Pkcs11 { uri: String },
}

impl KeySource {
    /// Interprets a command-line or environment value: `pkcs11:…` is a
    /// token URI, text starting with `-----BEGIN` is PEM, anything else a
    /// path.
    pub fn from_spec(value: OsString, origin: &str) -> KeySource {
        let bytes = value.into_vec();
        let trimmed = trim_start(&bytes);
        if trimmed.starts_with(b"-----BEGIN") {
            KeySource::Pem {
                origin: origin.to_string(),
                pem: Secret(bytes),
            }
        } else if let Some(uri) = trimmed.strip_prefix(b"pkcs11:") {
            KeySource::Pkcs11 {
                uri: format!("pkcs11:{}", String::from_utf8_lossy(uri)),
            }
        } else {
            KeySource::File(PathBuf::from(OsString::from_vec(bytes)))
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "signing key {}", p.display()),
            KeySource::Pem { origin, .. } => write!(f, "signing key from {origin}"),
            // The query part of a PKCS#11 URI may carry a PIN: never show it.
            KeySource::Pkcs11 { uri } => {
                write!(
                    f,
                    "PKCS#11 key {}",
                    uri.split('?').next().unwrap_or_default()
                )
            }
        }
    }
}

/// Where a certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    File(PathBuf),
    Pem { origin: String, pem: Vec<u8> },
}

impl CertSource {
    /// Text starting with `-----BEGIN` is PEM, anything else a path.
    pub fn from_spec(value: OsString, origin: &str) -> CertSource {
        let bytes = value.into_vec();
        if trim_start(&bytes).starts_with(b"-----BEGIN") {
            CertSource::Pem {
                origin: origin.to_string(),
                pem: bytes,
            }
        } else {
            CertSource::File(PathBuf::from(OsString::from_vec(bytes)))
        }
    }
}

impl fmt::Display for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertSource::File(p) => write!(f, "{}", p.display()),
            CertSource::Pem { origin, .. } => write!(f, "from {origin}"),
        }
    }
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// What to load: key, certificate, passphrase.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub key: KeySource,
    /// `None`: the key file's path with the extension `.crt`.
    pub cert: Option<CertSource>,
    pub passphrase: Option<Secret>,
}

impl KeyConfig {
    /// Reads `BAKERY_SIGNING_KEY`, `BAKERY_SIGNING_CERT` and
    /// `BAKERY_SIGNING_KEY_PASSPHRASE`. `None` when no key is configured.
    pub fn from_env() -> Option<KeyConfig> {
        KeyConfig::from_env_with(|name| std::env::var_os(name))
    }

    /// [`KeyConfig::from_env`] with a custom lookup (for tests and for
    /// callers that keep their own environment).
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<OsString>) -> Option<KeyConfig> {
        let key = lookup(ENV_KEY).filter(|v| !v.is_empty())?;
        let origin = |v: &str| format!("environment variable {v}");
        Some(KeyConfig {
            key: KeySource::from_spec(key, &origin(ENV_KEY)),
            cert: lookup(ENV_CERT)
                .filter(|v| !v.is_empty())
                .map(|v| CertSource::from_spec(v, &origin(ENV_CERT))),
            passphrase: lookup(ENV_PASSPHRASE).map(|v| Secret(v.into_vec())),
        })
    }

    /// Loads the key and certificate and checks that they match.
    pub fn load(&self) -> Result<SigningKey, KeyError> {
        let cert = match (&self.cert, &self.key) {
            (Some(c), _) => c.clone(),
            (None, KeySource::File(p)) => CertSource::File(p.with_extension("crt")),
            (None, other) => {
                return Err(KeyError::MissingCert {
                    key: other.to_string(),
                    hint: format!("set {ENV_CERT} to the certificate's path or PEM text"),
                })
            }
        };
        SigningKey::load(&self.key, &cert, self.passphrase.as_ref())
    }
}

/// A private key with its certificate, checked to belong together. This is
/// what signs root hashes ([`crate::pkcs7::sign_root_hash`]).
pub struct SigningKey {
    pkey: PKey<Private>,
    cert: X509,
    source: KeySource,
    fingerprint: Sha256Digest,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("source", &self.source.to_string())
            .field("subject", &subject_of(&self.cert))
            .field("certificate_fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The sha256 of a certificate's DER encoding: the `certificateFingerprint`
/// of the DDI signature partition.
pub fn cert_fingerprint(cert: &X509Ref) -> Result<Sha256Digest, ErrorStack> {
    let der = cert.to_der()?;
    Ok(Sha256Digest::from_bytes(Sha256::digest(&der).into()))
}

pub(crate) fn subject_of(cert: &X509Ref) -> String {
    cert.subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".to_string());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_limited(path: &Path, what: &str) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    const LIMIT: u64 = 1 << 20;
    let read_err = |source| KeyError::Read {
        what: what.to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    f.take(LIMIT + 1).read_to_end(&mut buf).map_err(read_err)?;
    if buf.len() as u64 > LIMIT {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB; not a PEM key or certificate",
        )));
    }
    Ok(buf)
}

impl SigningKey {
    /// Loads a key and its certificate and checks that the certificate's
    /// public key is the key's. An encrypted key needs `passphrase`.
    pub fn load(
        key: &KeySource,
        cert: &CertSource,
        passphrase: Option<&Secret>,
    ) -> Result<SigningKey, KeyError> {
        let key_what = key.to_string();
        let key_pem = match key {
            KeySource::File(p) => Secret(read_limited(p, &key_what)?),
            KeySource::Pem { pem, .. } => pem.clone(),
            KeySource::Pkcs11 { .. } => return Err(KeyError::Unsupported(key_what)),
        };
        let pkey = parse_private_key(key_pem.expose(), &key_what, passphrase)?;

        let cert_what = format!("certificate {cert}");
        let cert_pem = match cert {
            CertSource::File(p) => read_limited(p, &cert_what)?,
            CertSource::Pem { pem, .. } => pem.clone(),
        };
        let x509 = X509::from_pem(&cert_pem).map_err(|e| KeyError::BadCert {
            what: cert_what.clone(),
            detail: e.to_string(),
        })?;
        let public = x509.public_key().map_err(|e| KeyError::BadCert {
            what: cert_what.clone(),
            detail: e.to_string(),
        })?;
        if !public.public_eq(&pkey) {
            return Err(KeyError::Mismatch {
                key: key_what,
                cert: cert.to_string(),
                subject: subject_of(&x509),
            });
        }
        let fingerprint = cert_fingerprint(&x509).map_err(|e| KeyError::BadCert {
            what: cert_what,
            detail: e.to_string(),
        })?;
        Ok(SigningKey {
            pkey,
            cert: x509,
            source: key.clone(),
            fingerprint,
        })
    }

    /// Loads `key_path` and `cert_path` (PEM files).
    pub fn from_files(
        key_path: &Path,
        cert_path: &Path,
        passphrase: Option<&Secret>,
    ) -> Result<SigningKey, KeyError> {
        SigningKey::load(
            &KeySource::File(key_path.to_path_buf()),
            &CertSource::File(cert_path.to_path_buf()),
            passphrase,
        )
    }

    pub fn certificate(&self) -> &X509Ref {
        &self.cert
    }

    /// The certificate in PEM, e.g. to install as `/etc/verity.d/NAME.crt`.
    pub fn certificate_pem(&self) -> Result<Vec<u8>, ErrorStack> {
        self.cert.to_pem()
    }

    /// sha256 of the certificate's DER encoding.
    pub fn certificate_fingerprint(&self) -> Sha256Digest {
        self.fingerprint
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub(crate) fn private_key(&self) -> &PKeyRef<Private> {
        &self.pkey
    }
}

fn parse_private_key(
    pem: &[u8],
    what: &str,
    passphrase: Option<&Secret>,
) -> Result<PKey<Private>, KeyError> {
    let mut asked = false;
    // Never let OpenSSL prompt on the terminal: the callback either supplies
    // the passphrase or fails.
    let result = PKey::private_key_from_pem_callback(pem, |buf| {
        asked = true;
        match passphrase {
            Some(p) if p.expose().len() <= buf.len() => {
                buf[..p.expose().len()].copy_from_slice(p.expose());
                Ok(p.expose().len())
            }
            _ => Err(ErrorStack::get()),
        }
    });
    match result {
        Ok(k) => Ok(k),
        Err(e) if asked && passphrase.is_none() => {
            drop(e);
            Err(KeyError::Encrypted {
                what: what.to_string(),
            })
        }
        Err(e) if asked => Err(KeyError::WrongPassphrase {
            what: what.to_string(),
            detail: e.to_string(),
        }),
        Err(e) => {
            let detail = if e.errors().is_empty() {
                "no private key found".to_string()
            } else {
                e.to_string()
            };
            Err(KeyError::BadKey {
                what: what.to_string(),
                detail,
            })
        }
    }
}

/// What [`keygen`] wrote.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub key_path: PathBuf,
    pub cert_path: PathBuf,
    pub certificate_fingerprint: Sha256Digest,
}

/// Options for [`keygen_with`].
#[derive(Debug, Clone, Copy)]
pub struct KeygenOptions {
    pub rsa_bits: u32,
    pub validity_days: u32,
}

impl Default for KeygenOptions {
    fn default() -> Self {
        KeygenOptions {
            rsa_bits: DEFAULT_RSA_BITS,
            validity_days: DEFAULT_VALIDITY_DAYS,
        }
    }
}

/// Makes a new RSA-4096 key and a self-signed certificate with subject
/// `CN=common_name` and writes them to `out_dir/signing.key` (mode 0600,
/// unencrypted PKCS#8 PEM) and `out_dir/signing.crt` (mode 0644).
/// `out_dir` is created (mode 0700) if missing. Refuses to overwrite either
/// file; on any error neither file is left behind.
pub fn keygen(out_dir: &Path, common_name: &str) -> Result<GeneratedKey, KeyError> {
    keygen_with(out_dir, common_name, KeygenOptions::default())
}

/// [`keygen`] with a chosen RSA size and validity.
pub fn keygen_with(
    out_dir: &Path,
    common_name: &str,
    options: KeygenOptions,
) -> Result<GeneratedKey, KeyError> {
    let cn_ok = !common_name.is_empty()
        && common_name.chars().count() <= 64
        && !common_name.chars().any(char::is_control);
    if !cn_ok {
        return Err(KeyError::BadCommonName(common_name.to_string()));
    }
    let key_path = out_dir.join(KEY_FILE_NAME);
    let cert_path = out_dir.join(CERT_FILE_NAME);
    for p in [&key_path, &cert_path] {
        if p.symlink_metadata().is_ok() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    if !out_dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out_dir)
            .map_err(|source| KeyError::Write {
                path: out_dir.to_path_buf(),
                source,
            })?;
    }

    let (pkey, cert) = generate(common_name, options).map_err(KeyError::Generate)?;
    let key_pem = Secret(
        pkey.private_key_to_pem_pkcs8()
            .map_err(KeyError::Generate)?,
    );
    let cert_pem = cert.to_pem().map_err(KeyError::Generate)?;
    let fingerprint = cert_fingerprint(&cert).map_err(KeyError::Generate)?;

    let write = |path: &Path, mode: u32, bytes: &[u8]| -> Result<AtomicFile, KeyError> {
        let werr = |source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut f = AtomicFile::create(path, mode).map_err(werr)?;
        f.file_mut().write_all(bytes).map_err(werr)?;
        Ok(f)
    };
    let key_file = write(&key_path, 0o600, key_pem.expose())?;
    let cert_file = write(&cert_path, 0o644, &cert_pem)?;
    commit_all(vec![key_file, cert_file], true).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: key_path.clone(),
            }
        } else {
            KeyError::Write {
                path: out_dir.to_path_buf(),
                source,
            }
        }
    })?;
    Ok(GeneratedKey {
        key_path,
        cert_path,
        certificate_fingerprint: fingerprint,
    })
}

fn generate(
    common_name: &str,
    options: KeygenOptions,
) -> Result<(PKey<Private>, X509), ErrorStack> {
    let pkey = PKey::from_rsa(Rsa::generate(options.rsa_bits)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    let name = name.build();

    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&pkey)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(options.validity_days)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    // What `openssl req -x509` (and mkosi genkey) put in: a self-signed CA.
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .digital_signature()
            .key_cert_sign()
            .build()?,
    )?;
    // The authority key id refers to the SKI, which must already be set.
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(None, None))?;
    b.append_extension(aki)?;
    b.sign(&pkey, MessageDigest::sha256())?;
    Ok((pkey, b.build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        assert_eq!(
            KeySource::from_spec("/k.pem".into(), "x"),
            KeySource::File("/k.pem".into())
        );
        let k = KeySource::from_spec("\n-----BEGIN PRIVATE KEY-----\nAAAA\n".into(), "env X");
        assert!(matches!(k, KeySource::Pem { .. }));
        let shown = format!("{k} {k:?}");
        assert!(!shown.contains("AAAA"), "{shown}");
        let p = KeySource::from_spec("pkcs11:token=t;object=o?pin-value=1234".into(), "x");
        assert!(!p.to_string().contains("1234"), "{p}");
    }

    #[test]
    fn env_config() {
        let env = |k: &str| match k {
            ENV_KEY => Some(OsString::from("/keys/a.key")),
            ENV_PASSPHRASE => Some(OsString::from("pw")),
            _ => None,
        };
        let c = KeyConfig::from_env_with(env).unwrap();
        assert_eq!(c.key, KeySource::File("/keys/a.key".into()));
        assert!(c.cert.is_none());
        assert!(!format!("{c:?}").contains("pw"));
        assert!(KeyConfig::from_env_with(|_| None).is_none());
    }
}
