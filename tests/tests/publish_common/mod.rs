//! Helpers shared by the `publish_*` tests: a test signing key, fake
//! sealed images, the real `gpg` as the signature oracle, and the feed
//! invariant ("a manifest that verifies names only files that are there,
//! with those digests").

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use releases::{ExtensionName, ImageToPublish, ManifestSigner, OpenPgpSigner};
use sha2::{Digest, Sha256};
use sysupdate::{Arch, Manifest, Version};

pub fn signer() -> OpenPgpSigner {
    let key = signing::openpgp::OpenPgpSecretKey::generate(
        "Feed Test <feed@example.org>",
        signing::openpgp::Algorithm::Ed25519,
    )
    .expect("generate OpenPGP key");
    OpenPgpSigner::new(key).expect("signer")
}

/// A stand-in for a sealed image: deterministic bytes from its identity
/// (the publisher never looks inside).
pub fn fake_image(dir: &Path, name: &str, version: &str, arch: Arch, salt: &str) -> PathBuf {
    let p = dir.join(format!("in-{name}-{version}-{arch}-{salt}.img"));
    let mut bytes = Vec::new();
    for i in 0..64u32 {
        bytes.extend_from_slice(&Sha256::digest(
            format!("{name}/{version}/{arch}/{salt}/{i}").as_bytes(),
        ));
    }
    fs::write(&p, bytes).expect("write fake image");
    p
}

pub fn image(dir: &Path, name: &str, version: &str, arch: Arch) -> ImageToPublish {
    ImageToPublish {
        name: ExtensionName::new(name).unwrap(),
        version: Version::new(version).unwrap(),
        arch,
        path: fake_image(dir, name, version, arch, "v1"),
        sidecars: Vec::new(),
    }
}

/// `gpg --verify` as systemd-sysupdate runs it: only the given keyring,
/// trust model always.
pub fn gpg_verify(keyring: &[u8], data: &[u8], sig: &[u8]) -> bool {
    let home = tempfile::tempdir().unwrap();
    let kr = home.path().join("import-pubring.gpg");
    let d = home.path().join("SHA256SUMS");
    let s = home.path().join("SHA256SUMS.gpg");
    fs::write(&kr, keyring).unwrap();
    fs::write(&d, data).unwrap();
    fs::write(&s, sig).unwrap();
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(home.path())
        .args([
            "--no-options",
            "--no-default-keyring",
            "--no-auto-key-locate",
            "--no-auto-check-trustdb",
        ])
        .args(["--batch", "--trust-model=always", "--keyring"])
        .arg(&kr)
        .arg("--verify")
        .arg(&s)
        .arg(&d)
        .output()
        .expect("run gpg (Debian package gpg)");
    out.status.success()
}

/// Every file under `dir`: relative path → (bytes, mtime).
pub fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, (Vec<u8>, SystemTime)>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                let m = fs::metadata(&p).unwrap().modified().unwrap();
                out.insert(rel, (fs::read(&p).unwrap(), m));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// The outcome of looking at a manifest pair.
#[derive(Debug, PartialEq, Eq)]
pub enum PairState {
    /// Verifies, and every entry is present with its digest.
    Good { entries: usize },
    /// Missing or not verifying: a client refuses it (verifiably stale).
    Refused(String),
}

/// Checks a manifest pair against a file lookup. Panics (the invariant is
/// broken) when a verifying manifest names a missing or different file.
pub fn check_pair(
    what: &str,
    signer: &dyn ManifestSigner,
    sums: Option<&[u8]>,
    sig: Option<&[u8]>,
    lookup: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> PairState {
    let (Some(sums), Some(sig)) = (sums, sig) else {
        return PairState::Refused("manifest or signature missing".into());
    };
    if !signer.verify_detached(sums, sig) {
        return PairState::Refused("signature does not verify".into());
    }
    let m = Manifest::parse(sums).expect("a signed manifest parses");
    for (name, digest) in m.entries() {
        let bytes = lookup(name.as_str()).unwrap_or_else(|| {
            panic!("{what}: the signed manifest names {name}, which is missing")
        });
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            digest.to_hex(),
            "{what}: {name} does not match the signed manifest"
        );
    }
    PairState::Good { entries: m.len() }
}

/// [`check_pair`] on an extension directory.
pub fn check_dir(ext_dir: &Path, signer: &dyn ManifestSigner) -> PairState {
    let read = |n: &str| fs::read(ext_dir.join(n)).ok();
    let sums = read("SHA256SUMS");
    let sig = read("SHA256SUMS.gpg");
    check_pair(
        &ext_dir.display().to_string(),
        signer,
        sums.as_deref(),
        sig.as_deref(),
        &read,
    )
}

/// Names of the files in `dir`, sorted, without hidden ones.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}
