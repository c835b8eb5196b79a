//! Helpers for the `signing_*` tests: deterministic test data, test keys
//! made with the `openssl` command (an implementation independent of ours),
//! and wrappers around `veritysetup`.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::{output, require_tool, run_ok};
use signing::verity::{RootHash, VerityParams};

/// `len` bytes of deterministic pseudo-random data (xorshift64*).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `veritysetup format` with the parameters of `params`; returns the root
/// hash it prints.
pub fn veritysetup_format(data: &Path, hash: &Path, params: &VerityParams) -> RootHash {
    require_tool("veritysetup", "cryptsetup-bin");
    let salt = if params.salt().is_empty() {
        "-".to_string()
    } else {
        hex::encode(params.salt())
    };
    let out = run_ok(
        Command::new("veritysetup")
            .arg("format")
            .arg(format!("--salt={salt}"))
            .arg(format!("--uuid={}", params.uuid_string()))
            .arg(format!("--data-block-size={}", params.data_block_size()))
            .arg(format!("--hash-block-size={}", params.hash_block_size()))
            .arg(data)
            .arg(hash),
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap_or_else(|| panic!("veritysetup printed no root hash:\n{out}"));
    line.trim().parse().expect("veritysetup's root hash parses")
}

/// Whether `veritysetup verify DATA HASH ROOT` accepts.
pub fn veritysetup_verify(data: &Path, hash: &Path, root: &RootHash) -> bool {
    require_tool("veritysetup", "cryptsetup-bin");
    output(
        Command::new("veritysetup")
            .arg("verify")
            .arg(data)
            .arg(hash)
            .arg(root.to_string()),
    )
    .status
    .success()
}

/// An RSA key and self-signed certificate made by the `openssl` command in
/// `dir`: (key path, cert path).
pub fn openssl_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    require_tool("openssl", "openssl");
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .arg("-subj")
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (key, cert)
}

/// A small squashfs holding an extension: `usr/bin/hello`,
/// `usr/lib/extension-release.d/extension-release.demo`, `opt/demo/data`.
/// Reproducible (fixed times, root owner).
pub fn demo_squashfs(dir: &Path) -> PathBuf {
    require_tool("mksquashfs", "squashfs-tools");
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("usr/lib/extension-release.d")).unwrap();
    fs::create_dir_all(tree.join("usr/bin")).unwrap();
    fs::create_dir_all(tree.join("opt/demo")).unwrap();
    fs::write(
        tree.join("usr/lib/extension-release.d/extension-release.demo"),
        "ID=_any\n",
    )
    .unwrap();
    fs::write(tree.join("usr/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    // Some incompressible bytes so the image spans several blocks.
    fs::write(tree.join("opt/demo/data"), pseudo_random(300 * 1024, 7)).unwrap();
    let img = dir.join("fs.squashfs");
    run_ok(Command::new("mksquashfs").arg(&tree).arg(&img).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-all-root",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
    ]));
    img
}

/// Lists entries of `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    integration_tests::list_dir(dir)
}
