//! Root-hash signatures against the `openssl` command as the oracle:
//! `openssl smime -verify -binary -inform der -content ROOTHASH -nointern
//! -certfile CERT -CAfile CERT` accepts ours, `openssl smime -sign -noattr
//! -binary` makes the very same bytes, and our verifier follows systemd's
//! `verity.d` rules (signer must be one of the trusted certificates).

mod signing_util;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use integration_tests::{output, run_ok};
use signing::keys::SigningKey;
use signing::pkcs7::{sign_root_hash, verify_root_hash, Pkcs7Error, TrustedCerts};
use signing::verity::RootHash;
use signing_util::openssl_key;

fn root(n: u8) -> RootHash {
    RootHash::from_bytes([n; 32])
}

fn smime_verify(sig: &Path, content: &Path, cert: &Path) -> std::process::Output {
    output(
        Command::new("openssl")
            .args(["smime", "-verify", "-binary", "-inform", "der", "-nointern"])
            .arg("-in")
            .arg(sig)
            .arg("-content")
            .arg(content)
            .arg("-certfile")
            .arg(cert)
            .arg("-CAfile")
            .arg(cert)
            .args(["-out", "/dev/null"]),
    )
}

#[test]
fn openssl_accepts_our_signature_and_makes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key_path, cert_path) = openssl_key(d, "signer");
    let key = SigningKey::from_files(&key_path, &cert_path, None).unwrap();
    let r: RootHash = "4ff25246d75801db4a00ada537a7ce1d5c34521b297a0e80000baac8d85d9594"
        .parse()
        .unwrap();
    let sig = sign_root_hash(&r, &key).unwrap();
    let sig_path = d.join("roothash.p7s");
    fs::write(&sig_path, sig.as_der()).unwrap();
    // Exactly the hex, no newline, is what is signed.
    let content = d.join("roothash");
    fs::write(&content, r.to_hex()).unwrap();
    let out = smime_verify(&sig_path, &content, &cert_path);
    assert!(
        out.status.success(),
        "openssl smime -verify refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With a newline the content differs: refused.
    let with_nl = d.join("roothash.nl");
    fs::write(&with_nl, format!("{r}\n")).unwrap();
    assert!(!smime_verify(&sig_path, &with_nl, &cert_path)
        .status
        .success());

    // The same signature from openssl itself (RSA PKCS#1 v1.5 is
    // deterministic; no signed attributes, so no signing time).
    let reference = d.join("reference.p7s");
    run_ok(
        Command::new("openssl")
            .args(["smime", "-sign", "-noattr", "-binary", "-outform", "der"])
            .arg("-in")
            .arg(&content)
            .arg("-inkey")
            .arg(&key_path)
            .arg("-signer")
            .arg(&cert_path)
            .arg("-out")
            .arg(&reference),
    );
    assert!(
        fs::read(&reference).unwrap() == sig.as_der(),
        "our signature differs from `openssl smime -sign -noattr -binary`"
    );
    // Deterministic: signing again gives the same bytes.
    assert_eq!(sign_root_hash(&r, &key).unwrap(), sig);

    // Structure, as openssl prints it: detached, no signed attributes,
    // the signer certificate embedded.
    let printed = run_ok(
        Command::new("openssl")
            .args(["cms", "-cmsout", "-print", "-inform", "der", "-in"])
            .arg(&sig_path),
    );
    assert!(printed.contains("eContent: <ABSENT>"), "{printed}");
    assert!(
        printed.contains("signedAttrs:\n          <ABSENT>"),
        "{printed}"
    );
    assert!(printed.contains("subject: CN=signer"), "{printed}");

    // And our verifier accepts both.
    let mut trusted = TrustedCerts::new();
    trusted.add_file(&cert_path).unwrap();
    let who = verify_root_hash(&r, sig.as_der(), &trusted).unwrap();
    assert_eq!(who.origin, cert_path);
    assert_eq!(who.fingerprint, key.certificate_fingerprint());
    verify_root_hash(&r, &fs::read(&reference).unwrap(), &trusted).unwrap();
}

#[test]
fn our_verifier_refuses_other_keys_other_hashes_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (k1, c1) = openssl_key(d, "trusted");
    let (k2, c2) = openssl_key(d, "stranger");
    let trusted_key = SigningKey::from_files(&k1, &c1, None).unwrap();
    let stranger = SigningKey::from_files(&k2, &c2, None).unwrap();
    let mut trusted = TrustedCerts::new();
    trusted.add_file(&c1).unwrap();

    // Signed by another key, which embeds its own certificate: NOINTERN
    // means the embedded certificate does not count.
    let sig = sign_root_hash(&root(1), &stranger).unwrap();
    let e = verify_root_hash(&root(1), sig.as_der(), &trusted).unwrap_err();
    assert!(matches!(e, Pkcs7Error::NotTrusted { .. }), "{e}");
    assert!(
        e.to_string().contains("trusted.crt"),
        "the message names the trusted set: {e}"
    );

    // Right key, other root hash.
    let sig = sign_root_hash(&root(1), &trusted_key).unwrap();
    let e = verify_root_hash(&root(2), sig.as_der(), &trusted).unwrap_err();
    assert!(matches!(e, Pkcs7Error::NotTrusted { .. }), "{e}");

    // One flipped byte in the RSA signature (the last bytes of the DER).
    let mut bad = sig.as_der().to_vec();
    let n = bad.len();
    bad[n - 3] ^= 1;
    assert!(verify_root_hash(&root(1), &bad, &trusted).is_err());

    // Not DER at all.
    let e = verify_root_hash(&root(1), b"hello", &trusted).unwrap_err();
    assert!(matches!(e, Pkcs7Error::Malformed(_)), "{e}");

    // No trusted certificates at all.
    let e = verify_root_hash(&root(1), sig.as_der(), &TrustedCerts::new()).unwrap_err();
    assert!(e.to_string().contains("/etc/verity.d"), "{e}");

    // Both certificates trusted: the signer is identified.
    trusted.add_file(&c2).unwrap();
    let who = verify_root_hash(&root(1), sig.as_der(), &trusted).unwrap();
    assert_eq!(who.origin, c1);
    assert_eq!(who.subject, "CN=trusted");
}

#[test]
fn verity_d_directories_follow_systemd_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("keys");
    fs::create_dir(&keys).unwrap();
    let (k1, c1) = openssl_key(&keys, "vendor");
    let (_, c2) = openssl_key(&keys, "other");
    let vendor = SigningKey::from_files(&k1, &c1, None).unwrap();
    let sig = sign_root_hash(&root(7), &vendor).unwrap();

    let root_dir = d.join("root");
    for sub in [
        "etc/verity.d",
        "run/verity.d",
        "usr/lib/verity.d",
        "usr/local/lib/verity.d",
    ] {
        fs::create_dir_all(root_dir.join(sub)).unwrap();
    }
    // Nothing installed: clear error.
    let t = TrustedCerts::from_verity_d(&root_dir).unwrap();
    assert!(t.is_empty());
    assert!(verify_root_hash(&root(7), sig.as_der(), &t).is_err());

    // The vendor cert in /usr/lib/verity.d, another in /etc/verity.d;
    // files not named *.crt are ignored.
    fs::copy(&c1, root_dir.join("usr/lib/verity.d/vendor.crt")).unwrap();
    fs::copy(&c2, root_dir.join("etc/verity.d/other.crt")).unwrap();
    fs::write(root_dir.join("etc/verity.d/README"), "not a certificate").unwrap();
    let t = TrustedCerts::from_verity_d(&root_dir).unwrap();
    assert_eq!(t.len(), 2);
    let who = verify_root_hash(&root(7), sig.as_der(), &t).unwrap();
    assert_eq!(who.origin, root_dir.join("usr/lib/verity.d/vendor.crt"));

    // Same name in /etc, empty: masks the vendor certificate.
    fs::write(root_dir.join("etc/verity.d/vendor.crt"), "").unwrap();
    let t = TrustedCerts::from_verity_d(&root_dir).unwrap();
    assert_eq!(t.len(), 1);
    assert!(verify_root_hash(&root(7), sig.as_der(), &t).is_err());

    // Masked by a symlink to /dev/null in /run (higher than /usr/lib, lower
    // than /etc): remove the /etc mask first.
    fs::remove_file(root_dir.join("etc/verity.d/vendor.crt")).unwrap();
    symlink("/dev/null", root_dir.join("run/verity.d/vendor.crt")).unwrap();
    let t = TrustedCerts::from_verity_d(&root_dir).unwrap();
    assert_eq!(t.len(), 1, "{t:?}");
    fs::remove_file(root_dir.join("run/verity.d/vendor.crt")).unwrap();

    // An /etc override with a different certificate wins over /usr/lib.
    fs::copy(&c2, root_dir.join("etc/verity.d/vendor.crt")).unwrap();
    let t = TrustedCerts::from_verity_d(&root_dir).unwrap();
    assert!(verify_root_hash(&root(7), sig.as_der(), &t).is_err());
    fs::remove_file(root_dir.join("etc/verity.d/vendor.crt")).unwrap();

    // Symlinks resolve inside the root: an absolute link to
    // /keys/vendor.crt means ROOT/keys/vendor.crt, not the host's file.
    fs::remove_file(root_dir.join("usr/lib/verity.d/vendor.crt")).unwrap();
    let host_target = keys.join("vendor.crt");
    symlink(&host_target, root_dir.join("usr/lib/verity.d/vendor.crt")).unwrap();
    let t = TrustedCerts::from_verity_d(&root_dir).unwrap();
    assert!(
        verify_root_hash(&root(7), sig.as_der(), &t).is_err(),
        "a symlink escaped the root to {}",
        host_target.display()
    );
    let inside = root_dir.join(host_target.strip_prefix("/").unwrap());
    fs::create_dir_all(inside.parent().unwrap()).unwrap();
    fs::copy(&c1, &inside).unwrap();
    let t = TrustedCerts::from_verity_d(&root_dir).unwrap();
    verify_root_hash(&root(7), sig.as_der(), &t).unwrap();

    // A file that is not a certificate: an error naming it.
    fs::write(root_dir.join("etc/verity.d/broken.crt"), "garbage").unwrap();
    let e = TrustedCerts::from_verity_d(&root_dir).unwrap_err();
    assert!(e.to_string().contains("etc/verity.d/broken.crt"), "{e}");
}
