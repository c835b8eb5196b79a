//! Keys: `keygen` output checked with `openssl`, loading from files and the
//! environment, and every bad input the issue names giving a clear error
//! that never shows key material.

mod signing_util;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use integration_tests::run_ok;
use signing::keys::{
    keygen, keygen_with, CertSource, KeyConfig, KeyError, KeySource, KeygenOptions, Secret,
    SigningKey, CERT_FILE_NAME, ENV_CERT, ENV_KEY, ENV_PASSPHRASE, KEY_FILE_NAME,
};
use signing::pkcs7::{sign_root_hash, verify_root_hash, TrustedCerts};
use signing::verity::RootHash;
use signing_util::{names_in, openssl_key};

/// The base64 body lines of a PEM file: what must never be printed.
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_string)
        .collect()
}

#[test]
fn keygen_writes_a_0600_rsa4096_key_and_a_cert_openssl_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let g = keygen(&out, "Example sysext signing").unwrap();
    assert_eq!(g.key_path, out.join(KEY_FILE_NAME));
    assert_eq!(g.cert_path, out.join(CERT_FILE_NAME));
    assert_eq!(
        names_in(&out),
        vec![CERT_FILE_NAME.to_string(), KEY_FILE_NAME.to_string()]
    );
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&g.key_path), 0o600);
    assert_eq!(mode(&g.cert_path), 0o644);
    assert_eq!(mode(&out), 0o700);

    let text = run_ok(
        Command::new("openssl")
            .args(["pkey", "-noout", "-text", "-in"])
            .arg(&g.key_path),
    );
    assert!(
        text.contains("Private-Key: (4096 bit"),
        "{}",
        text.lines().next().unwrap_or("")
    );
    let subject = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&g.cert_path),
    );
    assert!(subject.contains("CN = Example sysext signing"), "{subject}");
    // The pair matches, and signatures made with it satisfy openssl smime.
    let key = SigningKey::from_files(&g.key_path, &g.cert_path, None).unwrap();
    assert_eq!(key.certificate_fingerprint(), g.certificate_fingerprint);
    let r = RootHash::from_bytes([3; 32]);
    let sig = sign_root_hash(&r, &key).unwrap();
    fs::write(dir.path().join("sig"), sig.as_der()).unwrap();
    fs::write(dir.path().join("content"), r.to_hex()).unwrap();
    run_ok(
        Command::new("openssl")
            .args([
                "smime",
                "-verify",
                "-binary",
                "-inform",
                "der",
                "-nointern",
                "-out",
                "/dev/null",
            ])
            .arg("-in")
            .arg(dir.path().join("sig"))
            .arg("-content")
            .arg(dir.path().join("content"))
            .arg("-certfile")
            .arg(&g.cert_path)
            .arg("-CAfile")
            .arg(&g.cert_path),
    );

    // Never overwrites; nothing changes on refusal.
    let before = fs::read(&g.key_path).unwrap();
    let e = keygen(&out, "again").unwrap_err();
    assert!(matches!(e, KeyError::Exists { .. }), "{e}");
    assert!(e.to_string().contains("never overwrites"), "{e}");
    assert_eq!(fs::read(&g.key_path).unwrap(), before);
    assert_eq!(names_in(&out).len(), 2);

    // Debug of the key shows where it came from, never the key.
    let pem = fs::read_to_string(&g.key_path).unwrap();
    let shown = format!("{key:?}");
    for line in pem_body_lines(&pem) {
        assert!(
            !shown.contains(&line),
            "Debug output contains key material: {shown}"
        );
    }
    assert!(shown.contains("signing.key"), "{shown}");
}

#[test]
fn keygen_refuses_a_bad_common_name_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    for bad in ["", "line\nbreak", &"x".repeat(65)] {
        let e = keygen_with(
            &out,
            bad,
            KeygenOptions {
                rsa_bits: 2048,
                validity_days: 1,
            },
        )
        .unwrap_err();
        assert!(matches!(e, KeyError::BadCommonName(_)), "{e}");
    }
    assert!(!out.exists());
    // Half-existing output (only a cert there) is refused too.
    fs::create_dir(&out).unwrap();
    fs::write(out.join(CERT_FILE_NAME), "old").unwrap();
    let e = keygen_with(
        &out,
        "x",
        KeygenOptions {
            rsa_bits: 2048,
            validity_days: 1,
        },
    )
    .unwrap_err();
    assert!(matches!(e, KeyError::Exists { .. }), "{e}");
    assert_eq!(names_in(&out), vec![CERT_FILE_NAME.to_string()]);
}

#[test]
fn bad_keys_give_clear_errors_without_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (k1, c1) = openssl_key(d, "one");
    let (_k2, c2) = openssl_key(d, "two");
    let key_pem = fs::read_to_string(&k1).unwrap();
    let secret_lines = pem_body_lines(&key_pem);
    let no_secrets = |e: &KeyError| {
        let text = format!("{e} {e:?}");
        for l in &secret_lines {
            assert!(
                !text.contains(l.as_str()),
                "error shows key material: {text}"
            );
        }
        text
    };

    // Missing key file.
    let e = SigningKey::from_files(&d.join("missing.key"), &c1, None).unwrap_err();
    let t = no_secrets(&e);
    assert!(
        t.contains("missing.key") && t.contains("No such file"),
        "{t}"
    );

    // Unreadable key (a directory: root can read any regular file).
    let e = SigningKey::from_files(d, &c1, None).unwrap_err();
    let t = no_secrets(&e);
    assert!(
        matches!(e, KeyError::Read { .. }) && t.contains("cannot read"),
        "{t}"
    );

    // Not a key at all (a certificate given as the key).
    let e = SigningKey::from_files(&c1, &c1, None).unwrap_err();
    assert!(matches!(e, KeyError::BadKey { .. }), "{e}");

    // Certificate of another key.
    let e = SigningKey::from_files(&k1, &c2, None).unwrap_err();
    let t = no_secrets(&e);
    assert!(matches!(e, KeyError::Mismatch { .. }), "{t}");
    assert!(
        t.contains("two.crt") && t.contains("CN=two") && t.contains("one.key"),
        "{t}"
    );

    // Missing certificate.
    let e = SigningKey::from_files(&k1, &d.join("nope.crt"), None).unwrap_err();
    assert!(no_secrets(&e).contains("nope.crt"), "{e}");

    // Encrypted keys: PKCS#8 and traditional PEM encryption.
    let enc8 = d.join("enc8.key");
    run_ok(
        Command::new("openssl")
            .args([
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-passout",
                "pass:correct horse",
            ])
            .arg("-in")
            .arg(&k1)
            .arg("-out")
            .arg(&enc8),
    );
    let enc_trad = d.join("enc-trad.key");
    run_ok(
        Command::new("openssl")
            .args([
                "rsa",
                "-traditional",
                "-aes256",
                "-passout",
                "pass:correct horse",
            ])
            .arg("-in")
            .arg(&k1)
            .arg("-out")
            .arg(&enc_trad),
    );
    for enc in [&enc8, &enc_trad] {
        let e = SigningKey::from_files(enc, &c1, None).unwrap_err();
        assert!(matches!(e, KeyError::Encrypted { .. }), "{e}");
        assert!(e.to_string().contains(ENV_PASSPHRASE), "{e}");
        let wrong = Secret::from("battery staple".to_string());
        let e = SigningKey::from_files(enc, &c1, Some(&wrong)).unwrap_err();
        assert!(matches!(e, KeyError::WrongPassphrase { .. }), "{e}");
        assert!(!format!("{e} {e:?}").contains("battery"), "{e:?}");
        let right = Secret::from("correct horse".to_string());
        let k = SigningKey::from_files(enc, &c1, Some(&right)).unwrap();
        assert!(!format!("{k:?}").contains("correct horse"));
    }

    // PKCS#11 is a recognised source but not implemented yet.
    let e = SigningKey::load(
        &KeySource::Pkcs11 {
            uri: "pkcs11:token=hsm?pin-value=1234".into(),
        },
        &CertSource::File(c1.clone()),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, KeyError::Unsupported(_)), "{e}");
    assert!(!e.to_string().contains("1234"), "{e}");
}

#[test]
fn keys_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (k, c) = openssl_key(d, "env");
    let env = |vars: Vec<(&'static str, OsString)>| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    };

    // Path in BAKERY_SIGNING_KEY; the certificate defaults to KEY.crt.
    let cfg = KeyConfig::from_env_with(env(vec![(ENV_KEY, k.clone().into())])).unwrap();
    let key = cfg.load().unwrap();
    assert_eq!(key.source(), &KeySource::File(k.clone()));

    // PEM text in the variables themselves.
    let key_pem = fs::read_to_string(&k).unwrap();
    let cert_pem = fs::read_to_string(&c).unwrap();
    let cfg = KeyConfig::from_env_with(env(vec![
        (ENV_KEY, key_pem.clone().into()),
        (ENV_CERT, cert_pem.into()),
    ]))
    .unwrap();
    let key = cfg.load().unwrap();
    let shown = format!("{key:?} {cfg:?} {}", key.source());
    for line in pem_body_lines(&key_pem) {
        assert!(!shown.contains(&line), "key material printed: {shown}");
    }
    assert!(
        shown.contains("environment variable BAKERY_SIGNING_KEY"),
        "{shown}"
    );

    // PEM key but no certificate: says which variable to set.
    let cfg = KeyConfig::from_env_with(env(vec![(ENV_KEY, key_pem.into())])).unwrap();
    let e = cfg.load().unwrap_err();
    assert!(e.to_string().contains(ENV_CERT), "{e}");

    // The loaded key signs verifiably.
    let mut trusted = TrustedCerts::new();
    trusted.add_file(&c).unwrap();
    let r = RootHash::from_bytes([9; 32]);
    verify_root_hash(&r, sign_root_hash(&r, &key).unwrap().as_der(), &trusted).unwrap();

    // Unset: no key configured.
    assert!(KeyConfig::from_env_with(|_| None).is_none());
}
