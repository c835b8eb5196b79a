//! Manifest signatures against GnuPG, the tool systemd-sysupdate runs.
//!
//! - `SHA256SUMS.gpg` made by `signing::openpgp` verifies with `gpg` invoked
//!   the way systemd-sysupdate invokes it (temporary home, `--keyring` =
//!   the published `import-pubring.gpg`, `--trust-model=always`), and with
//!   `gpgv`; both fail after any change to `SHA256SUMS` or with another key.
//! - `gpg --import` reads our binary keyring and shows our fingerprint.
//! - Our verifier agrees with gpg on signatures gpg itself made (with a key
//!   gpg generated, and with our key imported into gpg), good and bad.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::{output, require_tool, run_ok};
use signing::openpgp::{self, Algorithm, OpenPgpSecretKey};
use sysupdate::{Date, Manifest, Sha256Digest};

fn manifest_text() -> Vec<u8> {
    let mut m = Manifest::new();
    for (n, name) in [
        "kubernetes-v1.30.1-x86-64.raw",
        "kubernetes-v1.30.1-arm64.raw",
        "kubernetes-v1.30.2-x86-64.raw",
    ]
    .iter()
    .enumerate()
    {
        m.insert(
            name.parse().unwrap(),
            Sha256Digest::from_bytes([n as u8 + 1; 32]),
        );
    }
    m.set_best_before(Some(Date::new(2099, 12, 31).unwrap()));
    m.render().into_bytes()
}

/// Runs gpg exactly as systemd-sysupdate (pull-common.c) does, in a fresh
/// home directory; returns whether it reported a good signature.
fn gpg_verify_like_sysupdate(pubring: &Path, sig: &Path, data: &Path) -> (bool, String) {
    let home = tempfile::tempdir().unwrap();
    let out = output(
        Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args([
                "--no-options",
                "--no-default-keyring",
                "--no-auto-key-locate",
                "--no-auto-check-trustdb",
                "--batch",
                "--trust-model=always",
            ])
            .arg(format!("--keyring={}", pubring.display()))
            .arg("--verify")
            .arg(sig)
            .arg(data),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gpgv(pubring: &Path, sig: &Path, data: &Path) -> bool {
    output(
        Command::new("gpgv")
            .arg("--keyring")
            .arg(pubring)
            .arg(sig)
            .arg(data),
    )
    .status
    .success()
}

struct Feed {
    _dir: tempfile::TempDir,
    sums: PathBuf,
    sig: PathBuf,
    pubring: PathBuf,
    fingerprint: String,
}

fn signed_feed(algorithm: Algorithm) -> Feed {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let g = openpgp::keygen(&keys, "Test Feed <feed@example.org>", algorithm).unwrap();
    let key = OpenPgpSecretKey::load(&g.secret_key_path).unwrap();
    let sums = dir.path().join("SHA256SUMS");
    std::fs::write(&sums, manifest_text()).unwrap();
    let sig = dir.path().join("SHA256SUMS.gpg");
    std::fs::write(&sig, key.sign_detached(&manifest_text()).unwrap()).unwrap();
    Feed {
        _dir: dir,
        sums,
        sig,
        pubring: g.pubring_path,
        fingerprint: g.fingerprint,
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

fn check_feed(algorithm: Algorithm) {
    require_tool("gpg", "gnupg");
    require_tool("gpgv", "gpgv");
    let f = signed_feed(algorithm);

    let (ok, log) = gpg_verify_like_sysupdate(&f.pubring, &f.sig, &f.sums);
    assert!(ok, "gpg rejected our signature ({algorithm:?}):\n{log}");
    assert!(log.contains("Good signature"), "{log}");
    assert!(
        log.contains(&f.fingerprint),
        "gpg should name our fingerprint:\n{log}"
    );
    assert!(
        gpgv(&f.pubring, &f.sig, &f.sums),
        "gpgv rejected our signature"
    );
    let v = openpgp::verify_detached(&read(&f.pubring), &read(&f.sums), &read(&f.sig)).unwrap();
    assert_eq!(v.primary_fingerprint, f.fingerprint);

    // Any change to SHA256SUMS: one flipped bit anywhere, a dropped line,
    // an appended line.
    let orig = read(&f.sums);
    let mut variants: Vec<Vec<u8>> = Vec::new();
    for pos in [0, orig.len() / 2, orig.len() - 1] {
        let mut v = orig.clone();
        v[pos] ^= 0x01;
        variants.push(v);
    }
    let text = String::from_utf8(orig.clone()).unwrap();
    variants.push(
        text.lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes(),
    );
    variants.push(
        [
            orig.as_slice(),
            b"0000000000000000000000000000000000000000000000000000000000000000  evil.raw\n",
        ]
        .concat(),
    );
    for v in variants {
        std::fs::write(&f.sums, &v).unwrap();
        let (ok, log) = gpg_verify_like_sysupdate(&f.pubring, &f.sig, &f.sums);
        assert!(!ok, "gpg accepted a changed SHA256SUMS:\n{log}");
        assert!(!gpgv(&f.pubring, &f.sig, &f.sums));
        assert!(openpgp::verify_detached(&read(&f.pubring), &v, &read(&f.sig)).is_err());
    }
    std::fs::write(&f.sums, &orig).unwrap();

    // Another key's keyring.
    let other = signed_feed(Algorithm::Ed25519);
    let (ok, log) = gpg_verify_like_sysupdate(&other.pubring, &f.sig, &f.sums);
    assert!(
        !ok,
        "gpg accepted a signature from a key not in the keyring:\n{log}"
    );
    assert!(!gpgv(&other.pubring, &f.sig, &f.sums));
    assert!(openpgp::verify_detached(&read(&other.pubring), &orig, &read(&f.sig)).is_err());
    // Both keys in one keyring: still good (gpg and ours).
    let both = f.pubring.with_file_name("both.gpg");
    std::fs::write(&both, [read(&other.pubring), read(&f.pubring)].concat()).unwrap();
    assert!(gpg_verify_like_sysupdate(&both, &f.sig, &f.sums).0);
    assert!(openpgp::verify_detached(&read(&both), &orig, &read(&f.sig)).is_ok());
}

#[test]
fn ed25519_signature_verifies_with_gpg_and_fails_when_changed() {
    check_feed(Algorithm::Ed25519);
}

#[test]
fn rsa_signature_verifies_with_gpg_and_fails_when_changed() {
    check_feed(Algorithm::Rsa(3072));
}

#[test]
fn gpg_imports_the_binary_keyring() {
    require_tool("gpg", "gnupg");
    let f = signed_feed(Algorithm::Ed25519);
    let home = tempfile::tempdir().unwrap();
    let gpg = || {
        let mut c = Command::new("gpg");
        c.arg("--homedir").arg(home.path()).arg("--batch");
        c
    };
    run_ok(gpg().arg("--import").arg(&f.pubring));
    let listing = run_ok(gpg().args(["--with-colons", "--list-keys"]));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("fpr:") && l.contains(&f.fingerprint)),
        "fingerprint {} not listed:\n{listing}",
        f.fingerprint
    );
    // v4 key ("pub" record, algorithm 22 = EdDSA, usage includes sign).
    let pubrec = listing.lines().find(|l| l.starts_with("pub:")).unwrap();
    let fields: Vec<&str> = pubrec.split(':').collect();
    assert_eq!(fields[3], "22", "{pubrec}");
    assert!(
        fields[11].contains('s') || fields[11].contains('S'),
        "key must be usable for signing: {pubrec}"
    );
}

/// gpg signs, we verify: with a key gpg generated, and with our key
/// imported into gpg. Our answer must match gpg's for good and bad data.
#[test]
fn our_verifier_agrees_with_gpg_on_gpg_signatures() {
    require_tool("gpg", "gnupg");
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gpg = || {
        let mut c = Command::new("gpg");
        c.arg("--homedir").arg(home.path()).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    };
    run_ok(gpg().args([
        "--quick-gen-key",
        "GPG Made <gpg@example.org>",
        "ed25519",
        "sign",
        "never",
    ]));
    let gpg_ring = dir.path().join("gpg-ring.gpg");
    run_ok(
        gpg()
            .arg("--output")
            .arg(&gpg_ring)
            .args(["--export", "gpg@example.org"]),
    );

    // Our key, imported into gpg as a secret key.
    let ours = dir.path().join("ours");
    let g = openpgp::keygen(&ours, "Ours <ours@example.org>", Algorithm::Ed25519).unwrap();
    run_ok(gpg().arg("--import").arg(&g.secret_key_path));

    let data = dir.path().join("SHA256SUMS");
    std::fs::write(&data, manifest_text()).unwrap();
    for (user, ring) in [
        ("gpg@example.org", &gpg_ring),
        ("ours@example.org", &g.pubring_path),
    ] {
        for (name, args) in [
            ("bin.sig", vec!["--detach-sign"]),
            ("asc.sig", vec!["--detach-sign", "--armor"]),
        ] {
            let sig = dir.path().join(format!("{user}.{name}"));
            run_ok(
                gpg()
                    .arg("--local-user")
                    .arg(user)
                    .args(&args)
                    .arg("--output")
                    .arg(&sig)
                    .arg(&data),
            );
            let good = openpgp::verify_detached(&read(ring), &read(&data), &read(&sig));
            assert!(
                good.is_ok(),
                "{user} {name}: we rejected a signature gpg made: {good:?}"
            );
            let (gpg_ok, log) = gpg_verify_like_sysupdate(ring, &sig, &data);
            assert!(gpg_ok, "{log}");
            let mut bad = read(&data);
            bad[10] ^= 0x20;
            let bad_path = dir.path().join("bad");
            std::fs::write(&bad_path, &bad).unwrap();
            assert!(!gpg_verify_like_sysupdate(ring, &sig, &bad_path).0);
            assert!(
                openpgp::verify_detached(&read(ring), &bad, &read(&sig)).is_err(),
                "{user} {name}: we accepted changed data"
            );
        }
    }
}
