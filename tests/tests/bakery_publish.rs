//! `bakery publish` end to end, through the CLI: the example is built and
//! signed with keys from `bakery keygen`, published into a directory feed
//! and to a loopback GitHub, and the result is checked with real tools:
//! `gpg --verify` of `SHA256SUMS.gpg` (and of the catalogue) with the
//! keyring the feed publishes in its node snippets, `ignition-validate` on
//! the snippets, `sha256sum` on the images. Then the refusals: unsigned,
//! untrusted, changed images and missing settings leave no feed behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use integration_tests::github::MockGithub;
use integration_tests::{bakery_bin, example, list_dir, output, require_tool, run_ok};

const TOKEN: &str = "ghp_bakery_publish_test_token";

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let keys = dir.join(name);
    run_ok(
        Command::new(bakery_bin())
            .arg("keygen")
            .arg("--out")
            .arg(&keys)
            .args(["--name", &format!("publish test {name}")]),
    );
    keys
}

/// `bakery build examples/hello` into `out`, signed with `keys` if given.
fn build(out: &Path, keys: Option<&Path>) {
    let mut c = Command::new(bakery_bin());
    c.arg("build")
        .arg(example("hello"))
        .arg("--output")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000040")
        .env_remove("BAKERY_SIGNING_KEY")
        .env_remove("BAKERY_SIGNING_CERT");
    if let Some(k) = keys {
        c.arg("--key").arg(k.join("signing.key"));
    }
    run_ok(&mut c);
}

/// A `bakery publish` command with a clean environment.
fn publish_cmd(feed: &Path) -> Command {
    let mut c = Command::new(bakery_bin());
    c.arg("publish")
        .arg("--feed")
        .arg(feed)
        .env_remove("BAKERY_PGP_KEY")
        .env_remove("BAKERY_VERITY_CERT")
        .env_remove("GITHUB_TOKEN");
    c
}

fn with_keys<'a>(c: &'a mut Command, keys: &Path) -> &'a mut Command {
    c.arg("--pgp-key")
        .arg(keys.join("openpgp.key"))
        .arg("--verity-cert")
        .arg(keys.join("signing.crt"))
}

/// `gpg --verify SIG DATA` with only `keyring`, as systemd-sysupdate runs it.
fn gpg_verify(keyring: &[u8], data: &[u8], sig: &[u8]) -> bool {
    require_tool("gpg", "gpg");
    let home = tempfile::tempdir().unwrap();
    let kr = home.path().join("import-pubring.gpg");
    let d = home.path().join("data");
    let s = home.path().join("data.gpg");
    fs::write(&kr, keyring).unwrap();
    fs::write(&d, data).unwrap();
    fs::write(&s, sig).unwrap();
    let o = output(
        Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args([
                "--no-options",
                "--no-default-keyring",
                "--batch",
                "--trust-model=always",
                "--keyring",
            ])
            .arg(&kr)
            .arg("--verify")
            .arg(&s)
            .arg(&d),
    );
    o.status.success()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every file under `dir` (relative path → bytes).
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        let mut ents: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
        ents.sort();
        for p in ents {
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// The contents of `path` in an Ignition config (data URL, base64 or
/// percent-encoded).
fn ignition_file(ign: &serde_json::Value, path: &str) -> Vec<u8> {
    let f = ign["storage"]["files"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["path"] == path))
        .unwrap_or_else(|| panic!("no {path} in {ign}"));
    let src = f["contents"]["source"].as_str().unwrap();
    let data = src.strip_prefix("data:").unwrap();
    let (meta, payload) = data.split_once(',').unwrap();
    if meta.ends_with(";base64") {
        base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap()
    } else {
        let mut out = Vec::new();
        let b = payload.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&payload[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }
}

#[test]
fn built_example_published_to_a_directory_verifies_with_gpg() {
    require_tool("ignition-validate", "ignition");
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let out = dir.path().join("out");
    build(&out, Some(&keys));
    let feed = dir.path().join("feed");

    let mut c = publish_cmd(&feed);
    with_keys(&mut c, &keys)
        .args(["--base-url", "https://feed.example.org/sysext"])
        .args(["--best-before-days", "30"])
        .arg(&out);
    let o = output(&mut c);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let fp = {
        let der = output(
            Command::new("openssl")
                .args(["x509", "-outform", "der", "-in"])
                .arg(keys.join("signing.crt")),
        );
        sha256_hex(&der.stdout)
    };
    for arch in ["x86-64", "arm64"] {
        assert!(
            stdout.contains(&format!(
                "hello 1.0.0 {arch}: {} (ddi, signed by certificate sha256 {fp})",
                out.join(format!("hello-1.0.0-{arch}.raw")).display()
            )),
            "{stdout}"
        );
    }

    let ext = feed.join("hello");
    assert_eq!(
        list_dir(&feed),
        ["catalogue.json", "catalogue.json.gpg", "hello"]
    );
    assert_eq!(
        list_dir(&ext),
        [
            "SHA256SUMS",
            "SHA256SUMS.gpg",
            "hello-1.0.0-arm64.raw",
            "hello-1.0.0-x86-64.raw",
            "hello-arm64.bu",
            "hello-arm64.ign",
            "hello-x86-64.bu",
            "hello-x86-64.ign",
            "hello.conf",
            "hello.transfer",
        ]
    );
    // The images are the built ones, and the manifest lists their digests
    // (sha256sum agrees) and a BEST-BEFORE line.
    let sums = fs::read(ext.join("SHA256SUMS")).unwrap();
    let sums_text = String::from_utf8(sums.clone()).unwrap();
    for arch in ["x86-64", "arm64"] {
        let name = format!("hello-1.0.0-{arch}.raw");
        let bytes = fs::read(ext.join(&name)).unwrap();
        assert!(bytes == fs::read(out.join(&name)).unwrap());
        assert!(
            sums_text.contains(&format!("{}  {name}\n", sha256_hex(&bytes))),
            "{sums_text}"
        );
    }
    assert!(sums_text.contains("BEST-BEFORE-"), "{sums_text}");
    let check = run_ok(
        Command::new("sha256sum")
            .args(["-c", "--ignore-missing", "SHA256SUMS"])
            .current_dir(&ext),
    );
    assert_eq!(check.matches(": OK").count(), 2, "{check}");

    // The keyring the feed publishes (in the node snippets) is the one
    // keygen wrote, and gpg verifies the manifest with it.
    let keyring = fs::read(keys.join("import-pubring.gpg")).unwrap();
    let mut certs_seen = 0;
    for arch in ["x86-64", "arm64"] {
        let ign_path = ext.join(format!("hello-{arch}.ign"));
        let v = output(Command::new("ignition-validate").arg(&ign_path));
        assert!(v.status.success(), "{:?}", text(&v));
        let ign: serde_json::Value = serde_json::from_slice(&fs::read(&ign_path).unwrap()).unwrap();
        assert_eq!(
            ignition_file(&ign, "/etc/systemd/import-pubring.gpg"),
            keyring,
            "{arch}: the snippet installs keygen's keyring"
        );
        let cert = ignition_file(&ign, "/etc/verity.d/hello.crt");
        assert_eq!(cert, fs::read(keys.join("signing.crt")).unwrap());
        certs_seen += 1;
    }
    assert_eq!(certs_seen, 2);
    let sig = fs::read(ext.join("SHA256SUMS.gpg")).unwrap();
    assert!(gpg_verify(&keyring, &sums, &sig), "gpg --verify failed");
    // Any change to the manifest, or another key, fails.
    let mut tampered = sums.clone();
    tampered[0] ^= 1;
    assert!(!gpg_verify(&keyring, &tampered, &sig));
    let other = keygen(dir.path(), "other");
    let other_ring = fs::read(other.join("import-pubring.gpg")).unwrap();
    assert!(!gpg_verify(&other_ring, &sums, &sig));
    // The catalogue is signed the same way.
    assert!(gpg_verify(
        &keyring,
        &fs::read(feed.join("catalogue.json")).unwrap(),
        &fs::read(feed.join("catalogue.json.gpg")).unwrap()
    ));
    // The transfer file points at the feed URL and verifies signatures.
    let conf = fs::read_to_string(ext.join("hello.conf")).unwrap();
    assert!(
        conf.contains("https://feed.example.org/sysext/hello/"),
        "{conf}"
    );
    assert!(conf.contains("Verify=yes"), "{conf}");

    // Publishing again changes nothing.
    let before = tree(&feed);
    let mut c = publish_cmd(&feed);
    with_keys(&mut c, &keys)
        .args(["--base-url", "https://feed.example.org/sysext"])
        .args(["--best-before-days", "30"])
        .arg(out.join("hello-1.0.0-x86-64.raw"))
        .arg(out.join("hello-1.0.0-arm64.raw"));
    let again = run_ok(&mut c);
    assert!(again.contains("feed unchanged"), "{again}");
    assert!(tree(&feed) == before, "a second publish changed the feed");
}

#[test]
fn unsigned_untrusted_and_changed_images_are_refused_before_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let other = keygen(dir.path(), "other");
    let feed = dir.path().join("feed");
    let fails = |c: &mut Command, want: &[&str]| {
        let o = output(c);
        let (so, se) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{so}\n{se}");
        for w in want {
            assert!(se.contains(w), "stderr lacks {w:?}:\n{se}");
        }
        assert!(!feed.exists(), "a refused publish created the feed: {se}");
        assert!(!se.contains("PRIVATE KEY"), "{se}");
    };
    let base = ["--base-url", "https://feed.example.org"];

    // Bare (no key at build time).
    let bare = dir.path().join("bare");
    build(&bare, None);
    fails(
        with_keys(&mut publish_cmd(&feed), &keys)
            .args(base)
            .arg(&bare),
        &["is not signed", "bare filesystem", "--allow-unsigned"],
    );

    // Signed by a key whose certificate is not the one nodes trust.
    let theirs = dir.path().join("theirs");
    build(&theirs, Some(&other));
    fails(
        with_keys(&mut publish_cmd(&feed), &keys)
            .args(base)
            .arg(&theirs),
        &["hello-1.0.0-", "not trusted"],
    );

    // Signed, but no certificate to check it against.
    let ours = dir.path().join("ours");
    build(&ours, Some(&keys));
    fails(
        publish_cmd(&feed)
            .arg("--pgp-key")
            .arg(keys.join("openpgp.key"))
            .args(base)
            .arg(&ours),
        &["--verity-cert"],
    );

    // No OpenPGP key; no URL; both URL kinds.
    fails(
        publish_cmd(&feed)
            .arg("--verity-cert")
            .arg(keys.join("signing.crt"))
            .args(base)
            .arg(&ours),
        &["--pgp-key"],
    );
    fails(
        with_keys(&mut publish_cmd(&feed), &keys).arg(&ours),
        &["--base-url"],
    );

    // An image changed after the build: its SHA256SUMS line no longer fits.
    let changed = dir.path().join("changed");
    build(&changed, Some(&keys));
    let img = changed.join("hello-1.0.0-x86-64.raw");
    let mut bytes = fs::read(&img).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    fs::write(&img, &bytes).unwrap();
    fails(
        with_keys(&mut publish_cmd(&feed), &keys)
            .args(base)
            .arg(&changed),
        &["changed after the build"],
    );
    // Without the build's SHA256SUMS, the verity check catches it.
    fs::remove_file(changed.join("SHA256SUMS")).unwrap();
    fails(
        with_keys(&mut publish_cmd(&feed), &keys)
            .args(base)
            .arg(&img),
        &["hello-1.0.0-x86-64.raw"],
    );

    // --allow-unsigned publishes the bare build, and says so.
    let o = run_ok(
        with_keys(&mut publish_cmd(&feed), &keys)
            .args(base)
            .arg("--allow-unsigned")
            .arg(&bare),
    );
    assert!(o.contains("(bare, unsigned)"), "{o}");
    assert!(o.contains("unsigned: "), "{o}");
    assert!(feed.join("hello/hello-1.0.0-x86-64.raw").is_file());
}

#[test]
fn publish_to_github_mirrors_the_feed_and_reruns_are_noops() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let out = dir.path().join("out");
    build(&out, Some(&keys));
    let feed = dir.path().join("feed");
    let mock = MockGithub::start("acme", "feeds", TOKEN);
    let cmd = || {
        let mut c = publish_cmd(&feed);
        with_keys(&mut c, &keys)
            .args(["--github", "acme/feeds"])
            .args(["--github-api-url", &mock.url()])
            .args(["--github-web-url", &mock.url()])
            .arg(&out);
        c
    };

    // Without a token: a clear error before anything is written.
    let o = output(&mut cmd());
    let (so, se) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{so}\n{se}");
    assert!(se.contains("GITHUB_TOKEN"), "{se}");
    assert!(!feed.exists());
    // --base-url and --github exclude each other.
    let o = output(
        cmd()
            .env("GITHUB_TOKEN", TOKEN)
            .args(["--base-url", "https://x.example"]),
    );
    assert!(text(&o).1.contains("exclude each other"), "{:?}", text(&o));

    let stdout = run_ok(cmd().env("GITHUB_TOKEN", TOKEN));
    assert!(stdout.contains("release hello:"), "{stdout}");
    assert!(!stdout.contains(TOKEN));
    let files = mock.state().files("hello");
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    for want in [
        "SHA256SUMS",
        "SHA256SUMS.gpg",
        "hello-1.0.0-x86-64.raw",
        "hello-1.0.0-arm64.raw",
        "hello.conf",
        "hello.transfer",
    ] {
        assert!(names.contains(&want), "{want} not uploaded: {names:?}");
    }
    // Uploaded bytes are the feed directory's, and the manifest verifies.
    for (name, bytes) in &files {
        assert!(
            *bytes == fs::read(feed.join("hello").join(name)).unwrap(),
            "{name} differs from the feed directory"
        );
    }
    let keyring = fs::read(keys.join("import-pubring.gpg")).unwrap();
    assert!(gpg_verify(
        &keyring,
        &files["SHA256SUMS"],
        &files["SHA256SUMS.gpg"]
    ));
    // Transfer files point at the release download URL.
    let conf = String::from_utf8(files["hello.conf"].clone()).unwrap();
    assert!(
        conf.contains(&format!(
            "{}/acme/feeds/releases/download/hello/",
            mock.url()
        )),
        "{conf}"
    );

    // A re-run uploads nothing.
    let mutations = mock.state().mutations;
    let again = run_ok(cmd().env("GITHUB_TOKEN", TOKEN));
    assert!(again.contains("release hello: unchanged"), "{again}");
    assert_eq!(mock.state().mutations, mutations, "{again}");
}

#[test]
fn publish_help_is_complete() {
    let h = run_ok(Command::new(bakery_bin()).args(["publish", "--help"]));
    for want in [
        "<IMAGES|OUTDIR>",
        "--feed <DIR>",
        "--base-url <URL>",
        "--github <OWNER/REPO>",
        "--keep <N>",
        "--pgp-key <PATH>",
        "--verity-cert <PATH>",
        "--best-before-days <N>",
        "--allow-unsigned",
        "GITHUB_TOKEN",
        "BAKERY_PGP_KEY",
        "SHA256SUMS.gpg",
        "Examples:",
    ] {
        assert!(
            h.contains(want),
            "bakery publish --help lacks {want:?}:\n{h}"
        );
    }
    let top = run_ok(Command::new(bakery_bin()).arg("--help"));
    assert!(top.contains("publish"), "{top}");
}
