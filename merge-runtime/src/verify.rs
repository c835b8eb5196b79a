//! Trust decisions for images: the verification policy (`signed`,
//! `verity`, `any`; from `--policy` or `/etc/sysext/policy.conf`), the
//! verity material of an image (root hash, hash tree, signature), the
//! signature check against the `verity.d` certificates, and the verity
//! backends that make an image mountable only if it matches its root hash:
//! kernel dm-verity or a full user-space check before mounting.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use signing::pkcs7::{TrustedCerts, VerifiedSigner};
use signing::verity::{ByteRange, ReadAt, RootHash};

use crate::loopdev::LoopDevice;
use crate::root::Root;

/// Where the policy file lives, relative to `--root`.
pub const POLICY_FILE: &str = "etc/sysext/policy.conf";

/// Which images may be merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Only images whose root hash carries a valid signature by a
    /// certificate in `verity.d`.
    Signed,
    /// Only images with a root hash (signed or not); the data must match it.
    Verity,
    /// Anything; images that carry verity data are still checked against
    /// it, and a signature that is present must still be valid.
    Any,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Signed => "signed",
            Policy::Verity => "verity",
            Policy::Any => "any",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown verification policy {0:?}: expected signed, verity or any")]
pub struct BadPolicy(pub String);

impl FromStr for Policy {
    type Err = BadPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "signed" => Ok(Policy::Signed),
            "verity" => Ok(Policy::Verity),
            "any" => Ok(Policy::Any),
            _ => Err(BadPolicy(s.to_string())),
        }
    }
}

/// Where the effective policy came from (shown by `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum PolicySource {
    CommandLine,
    File { path: PathBuf },
    Default,
}

/// The policy in force and its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectivePolicy {
    pub policy: Policy,
    pub source: PolicySource,
}

/// The policy file is malformed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

/// Parses the policy file text. Syntax: `#` comments, blank lines, and
/// `policy = signed|verity|any` (the key is case-insensitive, `Policy=`
/// works too).
pub fn parse_policy_file(path: &Path, text: &str) -> Result<Option<Policy>, PolicyError> {
    let mut policy = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            // Tolerate an INI section header such as `[Verification]`.
            continue;
        }
        let err = |msg: String| PolicyError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let Some((k, v)) = line.split_once('=') else {
            return Err(err(format!(
                "expected `policy = signed|verity|any`, found {line:?}"
            )));
        };
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        if !k.eq_ignore_ascii_case("policy") {
            return Err(err(format!(
                "unknown key {k:?}; the only key is `policy` (signed, verity or any)"
            )));
        }
        policy = Some(
            v.parse::<Policy>()
                .map_err(|e| err(format!("key `policy`: {e}")))?,
        );
    }
    Ok(policy)
}

/// The policy to apply: `--policy` if given, else the file under `root`,
/// else `any` (systemd's default image policy for system extensions).
pub fn load_policy(root: &Root, cli: Option<Policy>) -> Result<EffectivePolicy, PolicyError> {
    if let Some(policy) = cli {
        return Ok(EffectivePolicy {
            policy,
            source: PolicySource::CommandLine,
        });
    }
    let path = match root.resolve(POLICY_FILE) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(EffectivePolicy {
                policy: Policy::Any,
                source: PolicySource::Default,
            })
        }
        Err(source) => {
            return Err(PolicyError::Io {
                path: root.join(POLICY_FILE),
                source,
            })
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(match parse_policy_file(&path, &text)? {
        Some(policy) => EffectivePolicy {
            policy,
            source: PolicySource::File { path },
        },
        None => EffectivePolicy {
            policy: Policy::Any,
            source: PolicySource::Default,
        },
    })
}

/// How an image's content was checked before it was mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerityMode {
    /// No verity data (a directory, or an unprotected image under `any`).
    None,
    /// Every data block was hashed in user space and matched the root hash
    /// before mounting, read through the read-only loop device.
    UserSpace,
    /// Mounted through a kernel dm-verity device; the root hash carries no
    /// signature.
    #[serde(rename = "kernel-verity")]
    Kernel,
    /// Kernel dm-verity, and the kernel checked the root-hash signature
    /// against its trusted keyrings (`root_hash_sig_key_desc`).
    #[serde(rename = "kernel-verity+kernel-signature")]
    KernelSignature,
    /// Kernel dm-verity; the root-hash signature was checked in user space
    /// against `verity.d` because the kernel's keyring does not trust the
    /// signer.
    #[serde(rename = "kernel-verity+userspace-signature")]
    KernelUserSpaceSignature,
}

impl VerityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VerityMode::None => "none",
            VerityMode::UserSpace => "user-space",
            VerityMode::Kernel => "kernel-verity",
            VerityMode::KernelSignature => "kernel-verity+kernel-signature",
            VerityMode::KernelUserSpaceSignature => "kernel-verity+userspace-signature",
        }
    }
}

/// Where the hash tree (with superblock) of an image is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashLocation {
    pub file: PathBuf,
    pub range: ByteRange,
}

/// The verity material of one image.
#[derive(Debug, Clone)]
pub struct VerityMaterial {
    pub root_hash: RootHash,
    /// Where the root hash came from, for messages.
    pub root_hash_origin: String,
    /// The protected data inside the image file.
    pub data: ByteRange,
    pub hash: HashLocation,
    /// DER PKCS#7 over the hex root hash, if any.
    pub signature: Option<Vec<u8>>,
    pub signature_origin: Option<String>,
}

/// Why an image may not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Incomplete(String),
    #[error("policy {policy} requires {need}, but {have}")]
    Policy {
        policy: Policy,
        need: &'static str,
        have: String,
    },
    #[error("signature check failed ({origin}): {source}")]
    Signature {
        origin: String,
        source: signing::pkcs7::Pkcs7Error,
    },
    #[error("the image does not match its root hash {root_hash}: {source}")]
    Verity {
        root_hash: RootHash,
        source: signing::verity::VerityError,
    },
    #[error("kernel dm-verity: {0}")]
    Kernel(String),
}

fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, VerifyError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(VerifyError::Incomplete(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// Reads the sidecar form (`NAME.roothash`, `NAME.verity`,
/// `NAME.roothash.p7s`) of a bare image of `image_size` bytes. `Ok(None)`
/// when there are no sidecars at all; an error when they are incomplete.
pub fn load_sidecars(
    sidecars: &crate::discover::Sidecars,
    image_size: u64,
) -> Result<Option<VerityMaterial>, VerifyError> {
    if sidecars.is_empty() {
        return Ok(None);
    }
    let Some(rh_path) = &sidecars.roothash else {
        return Err(VerifyError::Incomplete(format!(
            "{} exists but the root hash file (NAME.roothash) is missing",
            sidecars
                .verity
                .as_ref()
                .or(sidecars.signature.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )));
    };
    let Some(verity) = &sidecars.verity else {
        return Err(VerifyError::Incomplete(format!(
            "{} exists but the hash tree file (NAME.verity) is missing",
            rh_path.display()
        )));
    };
    let text = read_small(rh_path, 4096)?;
    let text = String::from_utf8_lossy(&text);
    let root_hash: RootHash = text
        .trim()
        .parse()
        .map_err(|e| VerifyError::Incomplete(format!("{}: {e}", rh_path.display())))?;
    let hash_len = std::fs::metadata(verity)
        .map_err(|source| VerifyError::Io {
            path: verity.clone(),
            source,
        })?
        .len();
    let signature = match &sidecars.signature {
        Some(p) => Some(read_small(p, signing::pkcs7::MAX_SIGNATURE_SIZE as u64)?),
        None => None,
    };
    Ok(Some(VerityMaterial {
        root_hash,
        root_hash_origin: rh_path.display().to_string(),
        data: ByteRange::new(0, image_size),
        hash: HashLocation {
            file: verity.clone(),
            range: ByteRange::new(0, hash_len),
        },
        signature,
        signature_origin: sidecars.signature.as_ref().map(|p| p.display().to_string()),
    }))
}

/// How many bytes of data the hash tree of `material` covers
/// (`data_blocks × data_block_size` from its superblock). dm-verity exposes
/// exactly this much; a data partition may be larger (alignment).
pub fn covered_data_len(material: &VerityMaterial) -> Result<u64, VerifyError> {
    let h = &material.hash;
    let f = std::fs::File::open(&h.file).map_err(|source| VerifyError::Io {
        path: h.file.clone(),
        source,
    })?;
    let (params, blocks) =
        signing::verity::read_superblock(&f, h.range.offset).map_err(|source| {
            VerifyError::Verity {
                root_hash: material.root_hash,
                source,
            }
        })?;
    blocks
        .checked_mul(u64::from(params.data_block_size()))
        .ok_or_else(|| {
            VerifyError::Incomplete(format!("{}: absurd verity superblock", h.file.display()))
        })
}

/// The outcome of the policy and signature check.
#[derive(Debug, Clone, Serialize)]
pub struct TrustDecision {
    /// The certificate that signed the root hash, when signed.
    pub signer: Option<String>,
    pub signer_fingerprint: Option<String>,
}

/// Applies `policy` to what an image carries. A signature that is present
/// is always checked (and must be valid) whatever the policy.
pub fn decide(
    policy: Policy,
    material: Option<&VerityMaterial>,
    what: &str,
    trusted: impl FnOnce() -> Result<TrustedCerts, signing::pkcs7::Pkcs7Error>,
) -> Result<TrustDecision, VerifyError> {
    let mut decision = TrustDecision {
        signer: None,
        signer_fingerprint: None,
    };
    match (policy, material) {
        (Policy::Signed | Policy::Verity, None) => {
            return Err(VerifyError::Policy {
                policy,
                need: if policy == Policy::Signed {
                    "a signed root hash"
                } else {
                    "a root hash (dm-verity)"
                },
                have: format!("{what} has no verity data"),
            })
        }
        (Policy::Signed, Some(m)) if m.signature.is_none() => {
            return Err(VerifyError::Policy {
                policy,
                need: "a signed root hash",
                have: format!("{what} has a root hash but no signature"),
            })
        }
        _ => {}
    }
    if let Some(m) = material {
        if let Some(sig) = &m.signature {
            let origin = m.signature_origin.clone().unwrap_or_default();
            let certs = trusted().map_err(|source| VerifyError::Signature {
                origin: origin.clone(),
                source,
            })?;
            let signer: VerifiedSigner =
                signing::pkcs7::verify_root_hash(&m.root_hash, sig, &certs)
                    .map_err(|source| VerifyError::Signature { origin, source })?;
            decision.signer = Some(format!("{} ({})", signer.subject, signer.origin.display()));
            decision.signer_fingerprint = Some(signer.fingerprint.to_hex());
        }
    }
    Ok(decision)
}

/// Something the data can be read from for verification.
struct LoopReader<'a>(&'a LoopDevice);

impl ReadAt for LoopReader<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.size())
    }
}

/// A device ready to be mounted, after verification.
#[derive(Debug)]
pub struct Activated {
    /// The block device to mount.
    pub device: PathBuf,
    pub mode: VerityMode,
}

/// Makes a verity-protected image mountable only if its data matches.
pub trait VerityBackend {
    fn mode(&self) -> VerityMode;
    /// `data` is a read-only loop device over exactly the protected range.
    fn activate(
        &self,
        data: &LoopDevice,
        material: &VerityMaterial,
    ) -> Result<Activated, VerifyError>;
}

/// Hashes every data block in user space, reading through the read-only
/// loop device that will be mounted, and compares the tree with the root
/// hash; the device is mounted only after that succeeded.
#[derive(Debug, Default)]
pub struct UserSpaceVerity;

/// Loads the hash tree of `material` into memory (it is small: about 1/128
/// of the data), so that later changes to its file cannot matter.
pub fn read_hash_tree(material: &VerityMaterial) -> Result<Vec<u8>, VerifyError> {
    use std::os::unix::fs::FileExt;
    let h = &material.hash;
    let len = usize::try_from(h.range.len).map_err(|_| {
        VerifyError::Incomplete(format!("{}: hash tree too large", h.file.display()))
    })?;
    let f = std::fs::File::open(&h.file).map_err(|source| VerifyError::Io {
        path: h.file.clone(),
        source,
    })?;
    let mut buf = vec![0u8; len];
    FileExt::read_exact_at(&f, &mut buf, h.range.offset).map_err(|source| VerifyError::Io {
        path: h.file.clone(),
        source: io::Error::new(
            source.kind(),
            format!(
                "reading the hash tree ({} bytes at {}): {source}",
                h.range.len, h.range.offset
            ),
        ),
    })?;
    Ok(buf)
}

/// Verifies `data_range` of `data` against `material` entirely in user space.
pub fn verify_data<D: ReadAt + ?Sized>(
    data: &D,
    data_range: ByteRange,
    material: &VerityMaterial,
) -> Result<(), VerifyError> {
    let tree = read_hash_tree(material)?;
    signing::verity::verify_tree(
        data,
        data_range,
        &tree,
        ByteRange::new(0, tree.len() as u64),
        &material.root_hash,
    )
    .map_err(|source| VerifyError::Verity {
        root_hash: material.root_hash,
        source,
    })?;
    Ok(())
}

impl VerityBackend for UserSpaceVerity {
    fn mode(&self) -> VerityMode {
        VerityMode::UserSpace
    }

    fn activate(
        &self,
        data: &LoopDevice,
        material: &VerityMaterial,
    ) -> Result<Activated, VerifyError> {
        verify_data(&LoopReader(data), ByteRange::new(0, data.size()), material)?;
        Ok(Activated {
            device: data.path().to_path_buf(),
            mode: VerityMode::UserSpace,
        })
    }
}

/// True when the running kernel can do dm-verity: device-mapper control
/// node present and the verity target built in or loaded.
pub fn kernel_dm_verity_present() -> bool {
    if !Path::new("/dev/mapper/control").exists() {
        return false;
    }
    if Path::new("/sys/module/dm_verity").exists() {
        return true;
    }
    std::fs::read_to_string("/proc/modules")
        .map(|m| m.lines().any(|l| l.starts_with("dm_verity ")))
        .unwrap_or(false)
}

/// Kernel dm-verity (a `verity` device-mapper target over the data and
/// hash loop devices, with the signature handed to the kernel keyring);
/// see [`crate::dmverity`].
pub use crate::dmverity::KernelDmVerity;

/// Which verity backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// Kernel when present and supported, else user space.
    Auto,
    Kernel,
    UserSpace,
}

/// Picks the backend. `Auto` uses kernel dm-verity when the kernel has
/// device-mapper with the verity target ([`crate::dmverity::available`]),
/// else user space.
pub fn select_backend(choice: BackendChoice) -> Box<dyn VerityBackend> {
    match choice {
        BackendChoice::Kernel => Box::new(KernelDmVerity::default()),
        BackendChoice::Auto if crate::dmverity::available().is_ok() => {
            Box::new(KernelDmVerity::default())
        }
        BackendChoice::Auto | BackendChoice::UserSpace => Box::new(UserSpaceVerity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_file_syntax() {
        let p = Path::new("/etc/sysext/policy.conf");
        assert_eq!(
            parse_policy_file(p, "# c\n\npolicy = signed\n").unwrap(),
            Some(Policy::Signed)
        );
        assert_eq!(
            parse_policy_file(p, "[Verification]\nPolicy=any\n").unwrap(),
            Some(Policy::Any)
        );
        assert_eq!(parse_policy_file(p, "").unwrap(), None);
        let e = parse_policy_file(p, "\npolicy = strict\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy.conf:2") && e.contains("strict"), "{e}");
        let e = parse_policy_file(p, "mode = any\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":1:") && e.contains("unknown key \"mode\""),
            "{e}"
        );
    }

    #[test]
    fn policy_without_material() {
        let none = || Ok(TrustedCerts::new());
        assert!(decide(Policy::Any, None, "x", none).is_ok());
        let e = decide(Policy::Signed, None, "x", none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("requires a signed root hash"), "{e}");
        let e = decide(Policy::Verity, None, "x", none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("requires a root hash"), "{e}");
    }
}
