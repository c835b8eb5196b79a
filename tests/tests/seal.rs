//! End-to-end tests of `bakery keygen` and of `bakery build` sealing its
//! images (`--format ddi|sidecar|bare`, `--key`/`--cert` or the
//! environment), always through the CLI and checked with real tools:
//!
//! - `sfdisk --dump` for the GPT (types from the Discoverable Partitions
//!   Specification, UUIDs spelling the root hash, read-only attribute);
//! - `systemd-dissect` for how systemd sees the DDI;
//! - `veritysetup verify` on the partitions' byte ranges (read-only loop
//!   devices at the offsets `sfdisk` reports), and `veritysetup format`
//!   with the salt and UUID `veritysetup dump` reads from our superblock,
//!   which must reproduce our tree and root hash byte for byte;
//! - a read-only mount of the data partition, compared with the recipe;
//! - `openssl smime -verify` on the signature from the signature partition
//!   (or the `.roothash.p7s` sidecar), and the certificate fingerprint;
//! - `sha256sum -c SHA256SUMS`;
//! - the real `systemd-sysext` 252 in a private mount namespace: it checks
//!   our signature against `/run/verity.d` (accepting our certificate and
//!   refusing another), and merges the DDI. This kernel has no
//!   device-mapper, so the merge itself runs with
//!   `SYSTEMD_DISSECT_VERITY_EMBEDDED=0` (systemd then mounts the root
//!   partition it found in the GPT without dm-verity); the kernel dm-verity
//!   path is covered by the VM tests of the node runtime.
//!
//! Then reproducibility, stale sidecar files, a failure while moving files
//! into place, and bad keys, each of which must leave the output directory
//! exactly as it was.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use integration_tests::{
    bakery_bin, example, in_private_mount_ns, list_dir, output, require_root, require_tool, run_ok,
    shell_quote, SysextRoot,
};
use sysupdate::Arch;

/// Partition type GUIDs from the Discoverable Partitions Specification
/// (root, root-verity, root-verity-sig), as `sfdisk` prints them.
const X86_64_TYPES: [&str; 3] = [
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
    "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5",
    "41092B05-9FC8-4523-994F-2DEF0408B176",
];
const ARM64_TYPES: [&str; 3] = [
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    "DF3300CE-D69F-4C92-978C-9BFB0F38D820",
    "6DB69DE6-29F4-4758-A7A5-962190F00CE3",
];

const EPOCH: &str = "1700000040";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `bakery keygen --out DIR/NAME`; returns the key directory.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let keys = dir.join(name);
    run_ok(
        Command::new(bakery_bin())
            .arg("keygen")
            .arg("--out")
            .arg(&keys)
            .args(["--name", &format!("seal test {name}")]),
    );
    keys
}

/// A `bakery build examples/hello` command with a clean signing
/// environment and a fixed SOURCE_DATE_EPOCH.
fn build_cmd(out: &Path) -> Command {
    let mut c = Command::new(bakery_bin());
    c.arg("build")
        .arg(example("hello"))
        .arg("--output")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("BAKERY_SIGNING_KEY")
        .env_remove("BAKERY_SIGNING_CERT")
        .env_remove("BAKERY_SIGNING_KEY_PASSPHRASE");
    c
}

fn build_ok(out: &Path, extra: &[&str], key: Option<&Path>) -> String {
    let mut c = build_cmd(out);
    c.args(extra);
    if let Some(k) = key {
        c.arg("--key").arg(k.join("signing.key"));
    }
    run_ok(&mut c)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn dissect_json(image: &Path) -> serde_json::Value {
    require_tool("systemd-dissect", "systemd-container");
    let out = run_ok(
        Command::new("systemd-dissect")
            .arg("--json=short")
            .arg(image),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("systemd-dissect JSON: {e}\n{out}"))
}

fn root_mount(json: &serde_json::Value) -> &serde_json::Value {
    json["mounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["designator"] == "root"))
        .unwrap_or_else(|| panic!("systemd-dissect lists no root partition: {json}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// sha256 of the DER form of a PEM certificate, computed by openssl.
fn cert_fingerprint(cert: &Path) -> String {
    let der = output(
        Command::new("openssl")
            .args(["x509", "-outform", "der", "-in"])
            .arg(cert),
    );
    assert!(der.status.success(), "openssl x509 failed");
    sha256_hex(&der.stdout)
}

/// `openssl smime -verify` of a detached DER signature over `content`,
/// trusting only `cert` (the way systemd's verity.d check works).
fn openssl_verify(sig: &Path, content: &Path, cert: &Path) -> Output {
    output(
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
            .arg(sig)
            .arg("-content")
            .arg(content)
            .arg("-certfile")
            .arg(cert)
            .arg("-CAfile")
            .arg(cert),
    )
}

fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    list_dir(dir)
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            let bytes = if p.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (n, bytes)
        })
        .collect()
}

/// The lines of a `veritysetup dump` value (`Salt:`, `UUID:`).
fn dump_field(dump: &str, field: &str) -> String {
    dump.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in veritysetup dump:\n{dump}"))
}

// ---------------------------------------------------------------------------
// keygen
// ---------------------------------------------------------------------------

#[test]
fn keygen_writes_keys_real_tools_accept_and_never_overwrites() {
    require_tool("openssl", "openssl");
    require_tool("gpg", "gpg");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let o = output(
        Command::new(bakery_bin())
            .args(["keygen", "--out"])
            .arg(&keys)
            .args(["--name", "Example sysext images"]),
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        list_dir(&keys),
        [
            "import-pubring.gpg",
            "openpgp.key",
            "signing.crt",
            "signing.key"
        ]
    );
    let mode = |n: &str| fs::metadata(keys.join(n)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("signing.key"), 0o600);
    assert_eq!(mode("openpgp.key"), 0o600);
    assert_eq!(mode("signing.crt"), 0o644);
    assert_eq!(
        fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // No private key material on the terminal.
    for secret in ["signing.key", "openpgp.key"] {
        let body = fs::read_to_string(keys.join(secret)).unwrap();
        for line in body
            .lines()
            .filter(|l| l.len() > 20 && !l.starts_with("-----"))
        {
            assert!(
                !stdout.contains(line) && !stderr.contains(line),
                "keygen printed part of {secret}"
            );
        }
    }
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
    // The printed fingerprint is the certificate's, as openssl computes it.
    let fp = cert_fingerprint(&keys.join("signing.crt"));
    assert!(stdout.contains(&fp), "{stdout}");

    // openssl: a valid RSA key, a self-signed certificate with our CN,
    // and the certificate's public key is the key's.
    let check = run_ok(
        Command::new("openssl")
            .args(["rsa", "-check", "-noout", "-in"])
            .arg(keys.join("signing.key")),
    );
    assert!(check.contains("RSA key ok"), "{check}");
    let subject = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(keys.join("signing.crt")),
    );
    assert!(subject.contains("CN = Example sysext images"), "{subject}");
    run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(keys.join("signing.crt"))
            .arg(keys.join("signing.crt")),
    );
    let pub_cert = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(keys.join("signing.crt")),
    );
    let pub_key = run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(keys.join("signing.key")),
    );
    assert_eq!(pub_cert, pub_key);

    // gpg reads the public keyring and the OpenPGP fingerprint we printed.
    let home = dir.path().join("gnupg");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    run_ok(
        Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--import"])
            .arg(keys.join("import-pubring.gpg")),
    );
    let listed = run_ok(Command::new("gpg").arg("--homedir").arg(&home).args([
        "--batch",
        "--with-colons",
        "--list-keys",
    ]));
    assert!(listed.contains("Example sysext images"), "{listed}");
    let gpg_fpr = listed
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .map(|l| l.trim_matches(':').to_string())
        .unwrap();
    assert!(stdout.contains(&gpg_fpr), "{stdout}\n{listed}");

    // A second run refuses and changes nothing.
    let before = snapshot(&keys);
    let o = output(
        Command::new(bakery_bin())
            .args(["keygen", "--out"])
            .arg(&keys),
    );
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(stderr.contains("signing.key"), "{stderr}");
    assert_eq!(snapshot(&keys), before);

    // Even one existing file (here the keyring alone) is enough to refuse.
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("import-pubring.gpg"), b"old").unwrap();
    let o = output(
        Command::new(bakery_bin())
            .args(["keygen", "--out"])
            .arg(&other),
    );
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("import-pubring.gpg"), "{stderr}");
    assert_eq!(list_dir(&other), ["import-pubring.gpg"]);
    assert_eq!(fs::read(other.join("import-pubring.gpg")).unwrap(), b"old");
}

// ---------------------------------------------------------------------------
// DDI
// ---------------------------------------------------------------------------

#[test]
fn signed_ddi_from_bakery_build_passes_sfdisk_dissect_veritysetup_mount_and_openssl() {
    require_root();
    require_tool("losetup", "util-linux");
    require_tool("veritysetup", "cryptsetup-bin");
    require_tool("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let out = dir.path().join("out");
    let stdout = build_ok(&out, &[], Some(&keys));
    // A key and no --format: DDIs, signed, and no "unsigned" note.
    assert!(stdout.contains("sealed as ddi, signed"), "{stdout}");
    assert!(!stdout.contains("unsigned"), "{stdout}");
    assert_eq!(
        list_dir(&out),
        [
            "SHA256SUMS",
            "hello-1.0.0-arm64.raw",
            "hello-1.0.0-x86-64.raw"
        ]
    );
    // SHA256SUMS lists every file, and sha256sum agrees.
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 2, "{sums}");
    let check = run_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(&out),
    );
    assert_eq!(check.matches(": OK").count(), 2, "{check}");
    let cert = keys.join("signing.crt");
    let fingerprint = cert_fingerprint(&cert);

    for (arch, types) in [("x86-64", X86_64_TYPES), ("arm64", ARM64_TYPES)] {
        let image = out.join(format!("hello-1.0.0-{arch}.raw"));
        // sfdisk: three partitions with the DPS types, labels, read-only.
        let (dump, parts) = integration_tests::sfdisk::dump(&image);
        assert!(dump.contains("label: gpt"), "{dump}");
        assert_eq!(parts.len(), 3, "{dump}");
        let labels = [
            format!("root-{arch}"),
            format!("root-{arch}-verity"),
            format!("root-{arch}-verity-sig"),
        ];
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.type_guid, types[i], "{dump}");
            assert_eq!(p.name, labels[i], "{dump}");
            assert_eq!(p.attrs, "GUID:60", "read-only: {dump}");
            assert_eq!(p.offset() % 4096, 0, "aligned: {dump}");
        }
        let verify = run_ok(Command::new("sfdisk").arg("--verify").arg(&image));
        assert!(verify.contains("No errors detected"), "{verify}");
        // The data and verity partition UUIDs spell the root hash.
        let root = format!("{}{}", parts[0].uuid, parts[1].uuid)
            .replace('-', "")
            .to_lowercase();
        assert_eq!(root.len(), 64);
        assert!(
            stdout.contains(&format!("{arch} verity root hash {root}")),
            "{stdout}"
        );

        // The signature partition: JSON, NUL padded to 16 KiB.
        assert_eq!(parts[2].len(), 16 * 1024);
        let raw = read_range(&image, parts[2].offset(), parts[2].len());
        let end = raw.iter().position(|&b| b == 0).unwrap();
        assert!(
            raw[end..].iter().all(|&b| b == 0),
            "only NULs after the JSON"
        );
        let json: serde_json::Value = serde_json::from_slice(&raw[..end]).unwrap();
        assert_eq!(json["rootHash"], root.as_str(), "{json}");
        assert_eq!(
            json["certificateFingerprint"],
            fingerprint.as_str(),
            "{json}"
        );
        let der = base64::engine::general_purpose::STANDARD
            .decode(json["signature"].as_str().unwrap())
            .unwrap();
        let sig_path = dir.path().join(format!("{arch}.p7s"));
        let content = dir.path().join(format!("{arch}.roothash"));
        fs::write(&sig_path, &der).unwrap();
        fs::write(&content, &root).unwrap();
        let o = openssl_verify(&sig_path, &content, &cert);
        assert!(o.status.success(), "openssl refused: {:?}", text(&o));
        // ... and refuses it for another root hash.
        fs::write(&content, "0".repeat(64)).unwrap();
        assert!(!openssl_verify(&sig_path, &content, &cert).status.success());

        // systemd-dissect sees a signed verity root with squashfs.
        let json = dissect_json(&image);
        let m = root_mount(&json);
        assert_eq!(m["fstype"], "squashfs", "{json}");
        assert_eq!(m["verity"], "signed", "{json}");
        assert_eq!(m["architecture"], arch, "{json}");

        // veritysetup on the GPT byte ranges through read-only loop
        // devices; veritysetup format with the salt and UUID from our
        // superblock reproduces our tree and root hash; the data partition
        // mounted read-only holds the recipe's files.
        let mnt = dir.path().join(format!("mnt-{arch}"));
        fs::create_dir(&mnt).unwrap();
        let work = dir.path().join(format!("work-{arch}"));
        fs::create_dir(&work).unwrap();
        let script = format!(
            r#"
img={img}; mnt={mnt}; work={work}
data=$(losetup --find --show --read-only --offset {doff} --sizelimit {dlen} "$img")
hash=$(losetup --find --show --read-only --offset {hoff} --sizelimit {hlen} "$img")
trap 'umount "$mnt" 2>/dev/null || true; losetup -d "$data" "$hash"' EXIT
veritysetup verify "$data" "$hash" {root}
echo VERIFY-OK
if veritysetup verify "$data" "$hash" {wrong} 2>/dev/null; then echo WRONG-ROOT-ACCEPTED; fi
veritysetup dump "$hash" > "$work/dump"
salt=$(sed -n 's/^Salt:[[:space:]]*//p' "$work/dump")
uuid=$(sed -n 's/^UUID:[[:space:]]*//p' "$work/dump")
veritysetup format --salt="$salt" --uuid="$uuid" "$data" "$work/ref.verity" > "$work/format"
echo "REF-ROOT $(sed -n 's/^Root hash:[[:space:]]*//p' "$work/format")"
cat "$hash" > "$work/ours.verity"
mount -t squashfs -o ro "$data" "$mnt"
mkdir -p "$work/tree"
cp -a "$mnt/." "$work/tree/"
"#,
            img = shell_quote(image.as_os_str()),
            mnt = shell_quote(mnt.as_os_str()),
            work = shell_quote(work.as_os_str()),
            doff = parts[0].offset(),
            dlen = parts[0].len(),
            hoff = parts[1].offset(),
            hlen = parts[1].len(),
            wrong = "42".repeat(32),
        );
        let o = in_private_mount_ns(&script);
        let (so, se) = text(&o);
        assert!(
            o.status.success(),
            "loop/verity/mount script failed:\n{so}\n{se}"
        );
        assert!(so.contains("VERIFY-OK"), "{so}\n{se}");
        assert!(!so.contains("WRONG-ROOT-ACCEPTED"), "{so}");
        assert!(
            so.contains(&format!("REF-ROOT {root}\n")),
            "veritysetup format gives another root hash:\n{so}"
        );
        let dump = fs::read_to_string(work.join("dump")).unwrap();
        assert_eq!(dump_field(&dump, "Hash type"), "1", "{dump}");
        assert_eq!(dump_field(&dump, "Data block size"), "4096", "{dump}");
        assert_eq!(dump_field(&dump, "Hash algorithm"), "sha256", "{dump}");
        // Our hash partition = veritysetup's hash file, then zero padding
        // up to the partition's 4096-byte alignment.
        let reference = fs::read(work.join("ref.verity")).unwrap();
        let ours = fs::read(work.join("ours.verity")).unwrap();
        assert!(ours.len() >= reference.len());
        assert!(
            ours[..reference.len()] == reference[..],
            "hash tree differs from veritysetup's"
        );
        assert!(ours[reference.len()..].iter().all(|&b| b == 0));
        // The mounted data partition holds the recipe's files.
        let tree = work.join("tree");
        for f in ["usr/bin/hello", "usr/lib/systemd/system/hello.service"] {
            assert_eq!(
                fs::read(tree.join(f)).unwrap(),
                fs::read(example("hello").join("files").join(f)).unwrap(),
                "{f}"
            );
        }
        let release =
            fs::read_to_string(tree.join("usr/lib/extension-release.d/extension-release.hello"))
                .unwrap();
        assert!(release.contains("ID=_any"), "{release}");
        assert!(
            release.contains(&format!("ARCHITECTURE={arch}")),
            "{release}"
        );
    }
}

#[test]
fn systemd_sysext_checks_our_signature_and_merges_the_ddi() {
    require_root();
    require_tool("systemd-sysext", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let other = keygen(dir.path(), "other");
    let native = Arch::native().expect("a systemd architecture");
    let out = dir.path().join("out");
    build_ok(&out, &["--arch", native.as_str()], Some(&keys));
    let image = out.join(format!("hello-1.0.0-{native}.raw"));

    let root = SysextRoot::new("ID=debian\nVERSION_ID=12\n");
    root.add_image("hello", &image);
    let r = shell_quote(root.path().as_os_str());
    let trusted = shell_quote(keys.join("signing.crt").as_os_str());
    let untrusted = shell_quote(other.join("signing.crt").as_os_str());
    // systemd 252 checks a DDI's signature in the kernel and, failing
    // that, in user space against the verity.d certificates (here
    // /run/verity.d on the namespace's own /run). With a trusted
    // certificate it goes on to activate dm-verity "by volume key", which
    // needs device-mapper (absent here); with only another certificate it
    // stops before that. systemd-sysext 252 exits 0 even when an image
    // cannot be set up, so whether it merged is read from the tree.
    let script = format!(
        "{setup}\
         mkdir -p /run/verity.d\n\
         echo '--- untrusted'\n\
         cp {untrusted} /run/verity.d/other.crt\n\
         SYSTEMD_LOG_LEVEL=debug systemd-sysext merge --root={r} 2>&1 || true\n\
         if [ -e {r}/usr/bin/hello ]; then echo MERGED; systemd-sysext unmerge --root={r}; fi\n\
         ls -A {r}/usr/bin\n\
         rm /run/verity.d/other.crt\n\
         echo '--- trusted'\n\
         cp {trusted} /run/verity.d/vendor.crt\n\
         SYSTEMD_LOG_LEVEL=debug systemd-sysext merge --root={r} 2>&1 || true\n\
         if [ -e {r}/usr/bin/hello ]; then echo MERGED; systemd-sysext unmerge --root={r}; fi\n\
         echo '--- merged'\n\
         SYSTEMD_DISSECT_VERITY_EMBEDDED=0 systemd-sysext merge --root={r}\n\
         ls -A {r}/usr/bin\n\
         sh {r}/usr/bin/hello seal\n\
         cat {r}/usr/lib/extension-release.d/extension-release.hello\n\
         systemd-sysext unmerge --root={r}\n\
         echo '--- unmerged'\n\
         ls -A {r}/usr/bin\n",
        setup = root.shell_setup(),
    );
    let o = in_private_mount_ns(&script);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "script failed\n{stdout}\n{stderr}");
    let section = |name: &str| -> &str {
        let start = stdout
            .find(&format!("--- {name}\n"))
            .unwrap_or_else(|| panic!("no section {name}:\n{stdout}"))
            + name.len()
            + 5;
        let rest = &stdout[start..];
        &rest[..rest.find("\n--- ").map_or(rest.len(), |i| i + 1)]
    };

    let untrusted_log = section("untrusted");
    assert!(!untrusted_log.contains("MERGED"), "{untrusted_log}");
    assert!(
        untrusted_log.contains("worked neither via the kernel nor in userspace"),
        "systemd should refuse a signature by an untrusted key:\n{untrusted_log}"
    );
    assert!(
        !untrusted_log.lines().any(|l| l == "hello"),
        "{untrusted_log}"
    );

    let trusted_log = section("trusted");
    assert!(
        trusted_log.contains("MERGED")
            || (trusted_log.contains("by volume key") && !trusted_log.contains("worked neither")),
        "systemd should accept the signature with our certificate:\n{trusted_log}"
    );

    let merged = section("merged");
    assert!(merged.lines().any(|l| l == "hello"), "{stdout}\n{stderr}");
    assert!(
        merged.contains("Hello from the hello extension, seal!"),
        "{merged}"
    );
    assert!(merged.contains("SYSEXT_VERSION_ID=1.0.0"), "{merged}");
    assert!(
        !section("unmerged").lines().any(|l| l == "hello"),
        "{stdout}"
    );
    assert!(stderr.contains("Merged extensions into"), "{stderr}");
}

#[test]
fn unsigned_ddi_and_the_unsigned_notes() {
    let dir = tempfile::tempdir().unwrap();
    // No key: bare squashfs and a clear "unsigned:" note.
    let bare = dir.path().join("bare");
    let stdout = build_ok(&bare, &["--arch", "x86-64"], None);
    assert!(stdout.contains("sealed as bare, unsigned"), "{stdout}");
    let note = stdout
        .lines()
        .find(|l| l.starts_with("unsigned: "))
        .unwrap_or_else(|| panic!("no unsigned note:\n{stdout}"));
    assert!(note.contains("--key"), "{note}");
    assert!(note.contains("bakery keygen"), "{note}");
    let image = bare.join("hello-1.0.0-x86-64.raw");
    let head = read_range(&image, 0, 4);
    assert_eq!(head, b"hsqs", "a bare squashfs image");
    assert_eq!(fs::metadata(&image).unwrap().len() % 4096, 0);

    // --format ddi without a key: a verity-only DDI, said so.
    let ddi = dir.path().join("ddi");
    let stdout = build_ok(&ddi, &["--arch", "x86-64", "--format", "ddi"], None);
    assert!(stdout.contains("sealed as ddi, unsigned"), "{stdout}");
    assert!(
        stdout.contains("unsigned: the DDIs carry a dm-verity tree but no signature"),
        "{stdout}"
    );
    let (dump, parts) = integration_tests::sfdisk::dump(&ddi.join("hello-1.0.0-x86-64.raw"));
    assert_eq!(parts.len(), 2, "{dump}");
    assert_eq!(parts[0].type_guid, X86_64_TYPES[0]);
    assert_eq!(parts[1].type_guid, X86_64_TYPES[1]);
    // The bare image and the DDI's data partition hold the same filesystem.
    let fs_bytes = fs::read(&image).unwrap();
    let data = read_range(
        &ddi.join("hello-1.0.0-x86-64.raw"),
        parts[0].offset(),
        parts[0].len(),
    );
    assert!(data[..fs_bytes.len()] == fs_bytes[..]);

    // A key in the environment: DDI by default; --format bare ignores the
    // key and says so.
    let keys = keygen(dir.path(), "env");
    let env_out = dir.path().join("env");
    let o = run_ok(
        build_cmd(&env_out)
            .args(["--arch", "x86-64"])
            .env("BAKERY_SIGNING_KEY", keys.join("signing.key")),
    );
    assert!(o.contains("sealed as ddi, signed"), "{o}");
    // PEM text in the environment works too and is never echoed.
    let pem_out = dir.path().join("pem");
    let key_pem = fs::read_to_string(keys.join("signing.key")).unwrap();
    let o = output(
        build_cmd(&pem_out)
            .args(["--arch", "x86-64"])
            .env("BAKERY_SIGNING_KEY", &key_pem)
            .env(
                "BAKERY_SIGNING_CERT",
                fs::read_to_string(keys.join("signing.crt")).unwrap(),
            ),
    );
    let (so, se) = text(&o);
    assert!(o.status.success(), "{so}\n{se}");
    assert!(so.contains("sealed as ddi, signed"), "{so}");
    assert!(!so.contains("PRIVATE KEY") && !se.contains("PRIVATE KEY"));
    assert_eq!(
        fs::read(pem_out.join("hello-1.0.0-x86-64.raw")).unwrap(),
        fs::read(env_out.join("hello-1.0.0-x86-64.raw")).unwrap(),
        "the same key from a file or from PEM text signs the same bytes"
    );
    let o = run_ok(
        build_cmd(&dir.path().join("bare2"))
            .args(["--arch", "x86-64", "--format", "bare"])
            .env("BAKERY_SIGNING_KEY", keys.join("signing.key")),
    );
    assert!(o.contains("sealed as bare, unsigned"), "{o}");
    assert!(o.contains("unsigned: --format bare"), "{o}");
}

// ---------------------------------------------------------------------------
// Sidecar
// ---------------------------------------------------------------------------

#[test]
fn sidecar_build_passes_veritysetup_openssl_dissect_and_unsquashfs() {
    require_tool("veritysetup", "cryptsetup-bin");
    require_tool("openssl", "openssl");
    require_tool("unsquashfs", "squashfs-tools");
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let out = dir.path().join("out");
    let stdout = build_ok(
        &out,
        &["--format", "sidecar", "--arch", "x86-64"],
        Some(&keys),
    );
    assert!(stdout.contains("sealed as sidecar, signed"), "{stdout}");
    let stem = "hello-1.0.0-x86-64";
    assert_eq!(
        list_dir(&out),
        [
            "SHA256SUMS".to_string(),
            format!("{stem}.raw"),
            format!("{stem}.roothash"),
            format!("{stem}.roothash.p7s"),
            format!("{stem}.verity"),
        ]
    );
    let check = run_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(&out),
    );
    assert_eq!(
        check.matches(": OK").count(),
        4,
        "every file is listed: {check}"
    );
    // Every file's path is printed.
    for f in list_dir(&out).iter().filter(|f| f.starts_with(stem)) {
        assert!(
            stdout.contains(&out.join(f).display().to_string()),
            "{f}: {stdout}"
        );
    }

    let raw = out.join(format!("{stem}.raw"));
    let verity = out.join(format!("{stem}.verity"));
    let roothash = fs::read_to_string(out.join(format!("{stem}.roothash"))).unwrap();
    let root = roothash.trim_end().to_string();
    assert_eq!(roothash, format!("{root}\n"));
    assert_eq!(
        read_range(&raw, 0, 4),
        b"hsqs",
        "the image is the bare filesystem"
    );

    run_ok(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&raw)
            .arg(&verity)
            .arg(&root),
    );
    let bad = output(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&raw)
            .arg(&verity)
            .arg("11".repeat(32)),
    );
    assert!(!bad.status.success());
    // veritysetup format with our salt and UUID gives our tree and root.
    let dump = run_ok(Command::new("veritysetup").arg("dump").arg(&verity));
    let reference = dir.path().join("ref.verity");
    let format = run_ok(
        Command::new("veritysetup")
            .arg("format")
            .arg(format!("--salt={}", dump_field(&dump, "Salt")))
            .arg(format!("--uuid={}", dump_field(&dump, "UUID")))
            .arg(&raw)
            .arg(&reference),
    );
    assert_eq!(dump_field(&format, "Root hash"), root, "{format}");
    assert!(fs::read(&reference).unwrap() == fs::read(&verity).unwrap());

    // openssl accepts the .p7s over the hex root hash, with our cert only.
    let content = dir.path().join("roothash.txt");
    fs::write(&content, &root).unwrap();
    let p7s = out.join(format!("{stem}.roothash.p7s"));
    let o = openssl_verify(&p7s, &content, &keys.join("signing.crt"));
    assert!(o.status.success(), "{:?}", text(&o));
    let other = keygen(dir.path(), "other");
    assert!(!openssl_verify(&p7s, &content, &other.join("signing.crt"))
        .status
        .success());

    // systemd-dissect finds the sidecar files beside the image (systemd
    // 252 calls sidecar verity data "external").
    let json = dissect_json(&raw);
    let m = root_mount(&json);
    assert_eq!(m["fstype"], "squashfs", "{json}");
    assert_eq!(m["verity"], "external", "{json}");

    // The filesystem holds the recipe's files.
    assert_eq!(
        run_ok(
            Command::new("unsquashfs")
                .arg("-cat")
                .arg(&raw)
                .arg("usr/bin/hello")
        ),
        fs::read_to_string(example("hello").join("files/usr/bin/hello")).unwrap()
    );
}

// ---------------------------------------------------------------------------
// Reproducibility and the output directory
// ---------------------------------------------------------------------------

#[test]
fn same_recipe_and_key_give_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    for format in ["ddi", "sidecar"] {
        let a = dir.path().join(format!("{format}-a"));
        let b = dir.path().join(format!("{format}-b"));
        build_ok(&a, &["--format", format], Some(&keys));
        build_ok(&b, &["--format", format], Some(&keys));
        let (sa, sb) = (snapshot(&a), snapshot(&b));
        assert_eq!(
            sa.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            sb.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        for ((name, x), (_, y)) in sa.iter().zip(&sb) {
            assert!(x == y, "{format}: {name} differs between two builds");
        }
        // Rebuilding into the same directory replaces files with the same
        // bytes and leaves no temporary files.
        build_ok(&a, &["--format", format], Some(&keys));
        assert!(
            snapshot(&a) == sa,
            "{format}: rebuild in place changed bytes"
        );
    }
    // Another key: another signature, same filesystem and root hash.
    let other = keygen(dir.path(), "other");
    let c = dir.path().join("ddi-c");
    let so = build_ok(&c, &["--arch", "x86-64"], Some(&other));
    let sa = build_ok(
        &dir.path().join("ddi-d"),
        &["--arch", "x86-64"],
        Some(&keys),
    );
    let root_line = |s: &str| {
        s.lines()
            .find(|l| l.contains("verity root hash"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(root_line(&so), root_line(&sa));
    assert_ne!(
        fs::read(c.join("hello-1.0.0-x86-64.raw")).unwrap(),
        fs::read(dir.path().join("ddi-a/hello-1.0.0-x86-64.raw")).unwrap()
    );
}

#[test]
fn changing_format_removes_stale_sidecar_files() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let out = dir.path().join("out");
    let other_line = format!("{}  other-2-x86-64.raw\n", "ab".repeat(32));
    fs::create_dir(&out).unwrap();
    fs::write(out.join("SHA256SUMS"), &other_line).unwrap();
    let stem = "hello-1.0.0-x86-64";

    build_ok(
        &out,
        &["--format", "sidecar", "--arch", "x86-64"],
        Some(&keys),
    );
    assert_eq!(list_dir(&out).len(), 5, "{:?}", list_dir(&out));

    // Signed sidecar -> unsigned sidecar: the old signature goes.
    build_ok(&out, &["--format", "sidecar", "--arch", "x86-64"], None);
    assert_eq!(
        list_dir(&out),
        [
            "SHA256SUMS".to_string(),
            format!("{stem}.raw"),
            format!("{stem}.roothash"),
            format!("{stem}.verity"),
        ]
    );
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert!(!sums.contains(".p7s"), "{sums}");

    // -> DDI: the sidecar files and their lines go; other lines stay.
    build_ok(&out, &["--arch", "x86-64"], Some(&keys));
    assert_eq!(
        list_dir(&out),
        ["SHA256SUMS".to_string(), format!("{stem}.raw")]
    );
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines.len(), 2, "{sums}");
    assert!(lines[0].ends_with(&format!("  {stem}.raw")), "{sums}");
    assert_eq!(lines[1], other_line.trim_end());
}

#[test]
fn a_failure_while_moving_files_into_place_leaves_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let other_line = format!("{}  other-2-x86-64.raw\n", "ab".repeat(32));
    fs::write(out.join("SHA256SUMS"), &other_line).unwrap();
    // The arm64 image cannot be renamed over a directory; x86-64 (built
    // first) is already in place by then and must be taken back.
    fs::create_dir(out.join("hello-1.0.0-arm64.raw")).unwrap();
    let before = snapshot(&out);
    let o = output(build_cmd(&out).arg("--key").arg(keys.join("signing.key")));
    let (so, se) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{so}\n{se}");
    assert!(se.contains("hello-1.0.0-arm64.raw"), "{se}");
    assert!(
        se.contains("cannot rename the finished file into place"),
        "{se}"
    );
    assert_eq!(snapshot(&out), before, "{se}");
}

// ---------------------------------------------------------------------------
// Bad keys
// ---------------------------------------------------------------------------

/// Runs a signed build that must fail before touching the output
/// directory; returns stderr.
fn build_fails(out: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let before = snapshot(out);
    let mut c = build_cmd(out);
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = output(&mut c);
    let (so, se) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?} should fail:\n{so}\n{se}"
    );
    assert!(se.starts_with("error: cannot load the signing key"), "{se}");
    assert_eq!(snapshot(out), before, "{args:?} left files behind: {se}");
    assert!(!se.contains("PRIVATE KEY"), "{se}");
    se
}

#[test]
fn bad_keys_give_clear_errors_and_leave_no_files() {
    require_tool("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor");
    let other = keygen(dir.path(), "other");
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(
        out.join("SHA256SUMS"),
        format!("{}  other-2-x86-64.raw\n", "ab".repeat(32)),
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let key = s(&keys.join("signing.key"));

    // Missing key.
    let missing = s(&dir.path().join("nope/signing.key"));
    let e = build_fails(&out, &["--key", &missing], &[]);
    assert!(e.contains(&missing) && e.contains("No such file"), "{e}");
    let e = build_fails(&out, &[], &[("BAKERY_SIGNING_KEY", &missing)]);
    assert!(e.contains(&missing), "{e}");

    // Unreadable key: a directory, and (as another user) a 0600 file.
    let e = build_fails(&out, &["--key", &s(&keys)], &[]);
    assert!(
        e.contains("cannot read signing key") && e.contains("directory"),
        "{e}"
    );
    let locked = dir.path().join("locked.key");
    fs::copy(&key, &locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let unprivileged_out = dir.path().join("out-nobody");
    fs::create_dir(&unprivileged_out).unwrap();
    fs::set_permissions(&unprivileged_out, fs::Permissions::from_mode(0o777)).unwrap();
    let mut c = build_cmd(&unprivileged_out);
    c.arg("--key")
        .arg(&locked)
        .arg("--cert")
        .arg(keys.join("signing.crt"));
    let o = if std::fs::read(&locked).is_ok() {
        // Root reads anything: run the build as nobody.
        require_tool("setpriv", "util-linux");
        let mut sp = Command::new("setpriv");
        sp.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(c.get_program())
            .args(c.get_args())
            .envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
            .env_remove("BAKERY_SIGNING_KEY")
            .env_remove("BAKERY_SIGNING_CERT")
            .env_remove("BAKERY_SIGNING_KEY_PASSPHRASE");
        output(&mut sp)
    } else {
        output(&mut c)
    };
    let (so, se) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{so}\n{se}");
    assert!(
        se.contains("cannot read signing key") && se.contains("Permission denied"),
        "{se}"
    );
    assert!(list_dir(&unprivileged_out).is_empty());

    // Not a key at all.
    let junk = dir.path().join("junk.key");
    fs::write(&junk, "this is not a key\n").unwrap();
    let e = build_fails(
        &out,
        &["--key", &s(&junk), "--cert", &s(&keys.join("signing.crt"))],
        &[],
    );
    assert!(e.contains("is not a PEM private key"), "{e}");

    // Missing certificate (default: the key's path with .crt).
    let lonely = dir.path().join("lonely.key");
    fs::copy(&key, &lonely).unwrap();
    let e = build_fails(&out, &["--key", &s(&lonely)], &[]);
    assert!(e.contains("lonely.crt"), "{e}");

    // A certificate that belongs to another key.
    let e = build_fails(
        &out,
        &["--key", &key, "--cert", &s(&other.join("signing.crt"))],
        &[],
    );
    assert!(e.contains("does not belong to"), "{e}");
    assert!(
        e.contains("seal test other"),
        "names the certificate's subject: {e}"
    );

    // --cert without a key.
    let e = build_fails(&out, &["--cert", &s(&keys.join("signing.crt"))], &[]);
    assert!(e.contains("--cert was given without a signing key"), "{e}");

    // An encrypted key (made by openssl) without, and with a wrong, passphrase.
    let enc = dir.path().join("enc.key");
    run_ok(
        Command::new("openssl")
            .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&enc)
            .args(["-passout", "pass:correct horse"]),
    );
    let cert = s(&keys.join("signing.crt"));
    let e = build_fails(&out, &["--key", &s(&enc), "--cert", &cert], &[]);
    assert!(
        e.contains("is encrypted and no passphrase was given"),
        "{e}"
    );
    assert!(e.contains("BAKERY_SIGNING_KEY_PASSPHRASE"), "{e}");
    let e = build_fails(
        &out,
        &["--key", &s(&enc), "--cert", &cert],
        &[("BAKERY_SIGNING_KEY_PASSPHRASE", "Xyzzy-97531")],
    );
    assert!(e.contains("could not be decrypted"), "{e}");
    assert!(!e.contains("Xyzzy"), "the passphrase is not echoed: {e}");

    // The right passphrase, from a file or the environment, signs the same
    // bytes as the unencrypted key.
    let pw = dir.path().join("passphrase");
    fs::write(&pw, "correct horse\n").unwrap();
    let a = dir.path().join("enc-a");
    let b = dir.path().join("enc-b");
    let c = dir.path().join("plain");
    let so = build_ok(
        &a,
        &[
            "--key",
            &s(&enc),
            "--cert",
            &cert,
            "--passphrase-file",
            &s(&pw),
        ],
        None,
    );
    assert!(so.contains("sealed as ddi, signed"), "{so}");
    run_ok(
        build_cmd(&b)
            .args(["--key", &s(&enc), "--cert", &cert])
            .env("BAKERY_SIGNING_KEY_PASSPHRASE", "correct horse"),
    );
    build_ok(&c, &[], Some(&keys));
    assert!(snapshot(&a) == snapshot(&c));
    assert!(snapshot(&b) == snapshot(&c));
}

#[test]
fn help_describes_sealing_and_keygen() {
    let top = run_ok(Command::new(bakery_bin()).arg("--help"));
    for want in ["build", "keygen", "bakery keygen --out keys"] {
        assert!(top.contains(want), "bakery --help lacks {want:?}:\n{top}");
    }
    let b = run_ok(Command::new(bakery_bin()).args(["build", "--help"]));
    for want in [
        "--format <FORMAT>",
        "ddi",
        "sidecar",
        "bare",
        "--key <PATH>",
        "--cert <PATH>",
        "--passphrase-file <PATH>",
        "BAKERY_SIGNING_KEY",
        "BAKERY_SIGNING_CERT",
        "BAKERY_SIGNING_KEY_PASSPHRASE",
        "unsigned",
        "root-ARCH-verity-sig",
        ".roothash.p7s",
        "SHA256SUMS",
    ] {
        assert!(b.contains(want), "bakery build --help lacks {want:?}:\n{b}");
    }
    let k = run_ok(Command::new(bakery_bin()).args(["keygen", "--help"]));
    for want in [
        "--out <DIR>",
        "--name <CN>",
        "signing.key",
        "signing.crt",
        "openpgp.key",
        "import-pubring.gpg",
        "0600",
        "/etc/verity.d",
        "never",
        "Examples:",
    ] {
        assert!(
            k.contains(want),
            "bakery keygen --help lacks {want:?}:\n{k}"
        );
    }
}
