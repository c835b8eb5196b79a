//! DDIs and sidecar images against real tools: `sfdisk --dump/--verify`
//! (the GPT), `systemd-dissect` 252 (how systemd sees the image),
//! `veritysetup verify` on the partitions' byte ranges through read-only
//! loop devices, a read-only mount of the data partition, and `openssl
//! smime` on the embedded signature. Then reproducibility, unsigned and
//! arm64 images, the type GUIDs against `systemd-id128 show`, and corrupt
//! images handed to the reader.

mod signing_util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::{in_private_mount_ns, require_root, require_tool, run_ok, shell_quote};
use signing::ddi::{
    partition_label, partition_type, read_ddi, read_ddi_file, read_ddi_for_arch, verify_ddi,
    write_ddi, DdiError, DdiOptions, Designator, PartitionRole, RootHashSource,
};
use signing::keys::SigningKey;
use signing::pkcs7::TrustedCerts;
use signing::sidecar::{read_sidecar, verify_sidecar, write_sidecar, SidecarError, SidecarPaths};
use signing::verity::{ByteRange, RootHash, VerityError};
use signing_util::{demo_squashfs, names_in, openssl_key, pseudo_random};
use sysupdate::Arch;

struct Fixture {
    dir: tempfile::TempDir,
    fs: PathBuf,
    key: SigningKey,
    cert: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let fs_img = demo_squashfs(dir.path());
    let (k, c) = openssl_key(dir.path(), "vendor");
    let key = SigningKey::from_files(&k, &c, None).unwrap();
    Fixture {
        dir,
        fs: fs_img,
        key,
        cert: c,
    }
}

fn trusted(cert: &Path) -> TrustedCerts {
    let mut t = TrustedCerts::new();
    t.add_file(cert).unwrap();
    t
}

fn dissect_json(image: &Path, extra: &[&str]) -> serde_json::Value {
    require_tool("systemd-dissect", "systemd-container");
    let out = run_ok(
        Command::new("systemd-dissect")
            .args(["--json=short"])
            .args(extra)
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

fn uuid_text(bytes: &[u8]) -> String {
    uuid::Uuid::from_slice(bytes)
        .unwrap()
        .hyphenated()
        .to_string()
}

#[test]
fn signed_ddi_passes_sfdisk_dissect_veritysetup_openssl_and_mounts() {
    require_root();
    require_tool("losetup", "util-linux");
    require_tool("veritysetup", "cryptsetup-bin");
    let f = fixture();
    // systemd wants extension-release.NAME to match the image name.
    let out = f.dir.path().join("demo.raw");
    let sealed = write_ddi(
        &f.fs,
        &out,
        &DdiOptions {
            arch: Arch::X86_64,
            key: Some(&f.key),
            verity: None,
        },
    )
    .unwrap();
    let root = sealed.root_hash;

    // sfdisk: three partitions with our types, UUIDs, labels, read-only.
    let (dump, parts) = integration_tests::sfdisk::dump(&out);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert_eq!(parts.len(), 3, "{dump}");
    let roles = [
        PartitionRole::Data,
        PartitionRole::Verity,
        PartitionRole::VeritySig,
    ];
    for (p, role) in parts.iter().zip(roles) {
        let ty = partition_type(Arch::X86_64, Designator::Root, role);
        assert_eq!(p.type_guid, ty.to_string().to_uppercase(), "{dump}");
        assert_eq!(
            p.name,
            partition_label(Arch::X86_64, Designator::Root, role),
            "{dump}"
        );
        assert_eq!(p.attrs, "GUID:60", "{dump}");
        assert_eq!(
            p.start * 512 % 4096,
            0,
            "partition not 4096-aligned: {dump}"
        );
    }
    assert_eq!(parts[0].name, "root-x86-64");
    assert_eq!(parts[1].name, "root-x86-64-verity");
    assert_eq!(parts[2].name, "root-x86-64-verity-sig");
    assert_eq!(
        parts[0].uuid,
        uuid_text(&root.as_bytes()[..16]).to_uppercase()
    );
    assert_eq!(
        parts[1].uuid,
        uuid_text(&root.as_bytes()[16..]).to_uppercase()
    );
    assert_eq!(parts[2].size * 512, 16 * 1024);
    let verify = run_ok(Command::new("sfdisk").arg("--verify").arg(&out));
    assert!(verify.contains("No errors detected"), "{verify}");

    // Our reader finds the same byte ranges.
    let layout = read_ddi_file(&out).unwrap();
    assert_eq!(layout.arch, Arch::X86_64);
    assert_eq!(layout.root_hash, root);
    assert_eq!(layout.root_hash_source, RootHashSource::SignaturePartition);
    assert_eq!(
        layout.data,
        ByteRange::new(parts[0].start * 512, parts[0].size * 512)
    );
    assert_eq!(
        layout.verity,
        ByteRange::new(parts[1].start * 512, parts[1].size * 512)
    );
    let sig = layout.signature.as_ref().unwrap();
    assert_eq!(sig.certificate_fingerprint, f.key.certificate_fingerprint());
    assert_eq!(layout.data, sealed.data);

    // systemd-dissect: root, squashfs, verity signed, the extension-release.
    let json = dissect_json(&out, &[]);
    let m = root_mount(&json);
    assert_eq!(m["fstype"], "squashfs", "{json}");
    assert_eq!(m["verity"], "signed", "{json}");
    assert_eq!(m["architecture"], "x86-64", "{json}");
    assert_eq!(json["useSystemExtension"], true, "{json}");
    assert!(
        json["extensionRelease"].to_string().contains("ID=_any"),
        "{json}"
    );

    // openssl accepts the signature from the JSON over the hex root hash.
    let der_path = f.dir.path().join("sig.der");
    fs::write(&der_path, sig.signature.as_der()).unwrap();
    let content = f.dir.path().join("roothash");
    fs::write(&content, root.to_hex()).unwrap();
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
            .arg(&der_path)
            .arg("-content")
            .arg(&content)
            .arg("-certfile")
            .arg(&f.cert)
            .arg("-CAfile")
            .arg(&f.cert),
    );

    // Our full user-space check, with the right and a wrong trust set.
    let image = fs::File::open(&out).unwrap();
    let v = verify_ddi(&image, Some(&trusted(&f.cert))).unwrap();
    assert_eq!(
        v.signer.unwrap().fingerprint,
        f.key.certificate_fingerprint()
    );
    let (_, other) = openssl_key(f.dir.path(), "other");
    let e = verify_ddi(&image, Some(&trusted(&other))).unwrap_err();
    assert!(matches!(e, DdiError::Signature(_)), "{e}");

    // veritysetup verify on the GPT byte ranges through read-only loop
    // devices, and the data partition mounted read-only shows the files.
    let mnt = f.dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let script = format!(
        r#"
img={img}; mnt={mnt}
data=$(losetup --find --show --read-only --offset {doff} --sizelimit {dlen} "$img")
hash=$(losetup --find --show --read-only --offset {hoff} --sizelimit {hlen} "$img")
trap 'umount "$mnt" 2>/dev/null || true; losetup -d "$data" "$hash"' EXIT
veritysetup verify "$data" "$hash" {root}
echo VERIFY-OK
if veritysetup verify "$data" "$hash" {wrong} 2>/dev/null; then echo WRONG-ROOT-ACCEPTED; fi
mount -t squashfs -o ro "$data" "$mnt"
cat "$mnt/usr/lib/extension-release.d/extension-release.demo"
"$mnt/usr/bin/hello" 2>/dev/null || cat "$mnt/usr/bin/hello"
ls "$mnt/opt/demo"
"#,
        img = shell_quote(out.as_os_str()),
        mnt = shell_quote(mnt.as_os_str()),
        doff = layout.data.offset,
        dlen = layout.data.len,
        hoff = layout.verity.offset,
        hlen = layout.verity.len,
        root = root,
        wrong = RootHash::from_bytes([0x42; 32]),
    );
    let o = in_private_mount_ns(&script);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "loop/verify/mount script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("VERIFY-OK"), "{stdout}\n{stderr}");
    assert!(!stdout.contains("WRONG-ROOT-ACCEPTED"), "{stdout}");
    assert!(stdout.contains("ID=_any"), "{stdout}");
    assert!(stdout.contains("hello"), "{stdout}");
    assert!(stdout.contains("data"), "{stdout}");
}

#[test]
fn same_filesystem_and_key_give_identical_ddi_bytes() {
    let f = fixture();
    // The filesystem itself is rebuilt from the same tree in another place.
    let again_dir = f.dir.path().join("again");
    fs::create_dir(&again_dir).unwrap();
    let fs2 = demo_squashfs(&again_dir);
    assert_eq!(
        fs::read(&f.fs).unwrap(),
        fs::read(&fs2).unwrap(),
        "mksquashfs is not reproducible here"
    );
    let opts = DdiOptions {
        arch: Arch::X86_64,
        key: Some(&f.key),
        verity: None,
    };
    let a = f.dir.path().join("a.raw");
    let b = f.dir.path().join("b.raw");
    let sa = write_ddi(&f.fs, &a, &opts).unwrap();
    let sb = write_ddi(&fs2, &b, &opts).unwrap();
    assert_eq!(sa.root_hash, sb.root_hash);
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "DDI bytes differ between identical builds"
    );
    // Overwriting an existing output is atomic and gives the same bytes.
    write_ddi(&f.fs, &a, &opts).unwrap();
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap());
    // No temporary files are left beside the outputs.
    assert!(
        names_in(f.dir.path()).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        names_in(f.dir.path())
    );
}

#[test]
fn unsigned_ddi_has_two_partitions_and_needs_an_external_root_hash() {
    let f = fixture();
    let out = f.dir.path().join("unsigned.raw");
    let sealed = write_ddi(
        &f.fs,
        &out,
        &DdiOptions {
            arch: Arch::X86_64,
            key: None,
            verity: None,
        },
    )
    .unwrap();
    let (dump, parts) = integration_tests::sfdisk::dump(&out);
    assert_eq!(parts.len(), 2, "{dump}");
    // systemd 252 does not derive the root hash from the partition UUIDs:
    // without one it sees no verity; given the root hash it matches the
    // partitions by UUID and reports verity.
    let json = dissect_json(&out, &[]);
    assert_eq!(root_mount(&json)["verity"], "no", "{json}");
    let json = dissect_json(&out, &[&format!("--root-hash={}", sealed.root_hash)]);
    assert_eq!(root_mount(&json)["verity"], "yes", "{json}");

    let image = fs::File::open(&out).unwrap();
    let layout = read_ddi(&image).unwrap();
    assert!(layout.signature.is_none());
    assert_eq!(layout.root_hash_source, RootHashSource::PartitionUuids);
    assert_eq!(layout.root_hash, sealed.root_hash);
    verify_ddi(&image, None).unwrap();
    let e = verify_ddi(&image, Some(&trusted(&f.cert))).unwrap_err();
    assert!(matches!(e, DdiError::Unsigned), "{e}");
}

#[test]
fn arm64_ddi_uses_arm64_types() {
    let f = fixture();
    let out = f.dir.path().join("arm.raw");
    write_ddi(
        &f.fs,
        &out,
        &DdiOptions {
            arch: Arch::Arm64,
            key: Some(&f.key),
            verity: None,
        },
    )
    .unwrap();
    let (dump, parts) = integration_tests::sfdisk::dump(&out);
    assert_eq!(
        parts[0].type_guid, "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        "{dump}"
    );
    assert_eq!(
        parts[1].type_guid, "DF3300CE-D69F-4C92-978C-9BFB0F38D820",
        "{dump}"
    );
    assert_eq!(
        parts[2].type_guid, "6DB69DE6-29F4-4758-A7A5-962190F00CE3",
        "{dump}"
    );
    assert_eq!(parts[0].name, "root-arm64");
    let json = dissect_json(&out, &[]);
    assert_eq!(root_mount(&json)["architecture"], "arm64", "{json}");
    let image = fs::File::open(&out).unwrap();
    assert_eq!(read_ddi(&image).unwrap().arch, Arch::Arm64);
    let e = read_ddi_for_arch(&image, Arch::X86_64).unwrap_err();
    assert!(matches!(e, DdiError::NoPartitions { .. }), "{e}");
    assert!(e.to_string().contains("root-arm64"), "{e}");
}

#[test]
fn type_guids_match_systemd_id128() {
    require_tool("systemd-id128", "systemd");
    let out = run_ok(Command::new("systemd-id128").arg("show"));
    let known: std::collections::HashMap<&str, &str> = out
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?, it.next()?))
        })
        .collect();
    let mut checked = 0;
    for arch in Arch::ALL {
        for d in [Designator::Root, Designator::Usr] {
            for role in [
                PartitionRole::Data,
                PartitionRole::Verity,
                PartitionRole::VeritySig,
            ] {
                let name = partition_label(arch, d, role);
                let id = known
                    .get(name.as_str())
                    .unwrap_or_else(|| panic!("systemd-id128 show does not know {name}"));
                assert_eq!(
                    partition_type(arch, d, role).simple().to_string(),
                    *id,
                    "{name}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 48);
}

/// Applies `mutate` to a copy of `good` and returns what the reader says.
fn read_mutated(
    good: &[u8],
    mutate: impl FnOnce(&mut Vec<u8>),
) -> Result<signing::ddi::DdiLayout, DdiError> {
    let mut img = good.to_vec();
    mutate(&mut img);
    read_ddi(&img[..])
}

#[test]
fn corrupt_ddis_are_refused_with_clear_errors() {
    let f = fixture();
    let out = f.dir.path().join("good.raw");
    let sealed = write_ddi(
        &f.fs,
        &out,
        &DdiOptions {
            arch: Arch::X86_64,
            key: Some(&f.key),
            verity: None,
        },
    )
    .unwrap();
    let good = fs::read(&out).unwrap();
    read_ddi(&good[..]).unwrap();
    let sig_at = sealed.signature.unwrap().0.offset as usize;
    let msg = |r: Result<signing::ddi::DdiLayout, DdiError>| match r {
        Ok(_) => panic!("corrupt image accepted"),
        Err(e) => e.to_string(),
    };

    let e = msg(read_mutated(&good, |i| i[512 + 24] ^= 1));
    assert!(
        e.contains("primary GPT header") && e.contains("CRC32"),
        "{e}"
    );
    let e = msg(read_mutated(&good, |i| i[1024 + 60] ^= 1));
    assert!(
        e.contains("partition entries") && e.contains("corrupt"),
        "{e}"
    );
    let n = good.len();
    let e = msg(read_mutated(&good, |i| i[n - 512 + 30] ^= 1));
    assert!(e.contains("backup GPT header"), "{e}");
    let e = msg(read_mutated(&good, |i| i.truncate(n - 4096)));
    assert!(
        e.contains("backup GPT header") || e.contains("truncated"),
        "{e}"
    );
    let e = msg(read_mutated(&good, |i| i[..512].fill(0)));
    assert!(e.contains("protective MBR"), "{e}");
    let e = msg(read_ddi(&vec![0u8; 1000][..]));
    assert!(e.contains("GPT disk image"), "{e}");

    // Signature partition content.
    let json_len = good[sig_at..].iter().position(|&b| b == 0).unwrap();
    let json = String::from_utf8(good[sig_at..sig_at + json_len].to_vec()).unwrap();
    let replace_json = |new: &str| {
        let new = new.to_string();
        move |i: &mut Vec<u8>| {
            i[sig_at..sig_at + 16384].fill(0);
            i[sig_at..sig_at + new.len()].copy_from_slice(new.as_bytes());
        }
    };
    let other_root = "ab".repeat(32);
    let e = msg(read_mutated(
        &good,
        replace_json(&json.replace(&sealed.root_hash.to_hex(), &other_root)),
    ));
    assert!(e.contains("do not belong together"), "{e}");
    let e = msg(read_mutated(&good, |i| i[sig_at + json_len + 100] = b'x'));
    assert!(e.contains("other than NUL"), "{e}");
    let e = msg(read_mutated(&good, replace_json("{\"rootHash\": 5}")));
    assert!(
        e.contains("root-x86-64-verity-sig") && e.contains("JSON"),
        "{e}"
    );
    let fp = f.key.certificate_fingerprint().to_hex();
    let e = msg(read_mutated(
        &good,
        replace_json(&json.replace(&fp, &"0".repeat(64))),
    ));
    assert!(e.contains("certificateFingerprint"), "{e}");

    // Contents that the table cannot vouch for: only the full check sees them.
    let trust = trusted(&f.cert);
    let data_at = sealed.data.offset as usize;
    let mut img = good.clone();
    img[data_at + 5000] ^= 1;
    match verify_ddi(&img[..], Some(&trust)) {
        Err(DdiError::Verity(VerityError::DataBlockMismatch { block: 1, .. })) => {}
        other => panic!("flipped data byte: {other:?}"),
    }
    let mut img = good.clone();
    img[sealed.verity.offset as usize + 4096 + 7] ^= 1;
    assert!(matches!(
        verify_ddi(&img[..], Some(&trust)),
        Err(DdiError::Verity(_))
    ));
    // A signature byte changed inside the base64 text.
    let b64_start = json.find("\"signature\":\"").unwrap() + 13 + 200;
    let mut img = good.clone();
    img[sig_at + b64_start] = if img[sig_at + b64_start] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let r = read_ddi(&img[..]).and_then(|_| verify_ddi(&img[..], Some(&trust)));
    assert!(r.is_err(), "tampered signature accepted");

    // Random damage to the table sectors never panics and never passes
    // unnoticed where a CRC covers it.
    let noise = pseudo_random(4000, 77);
    for k in 0..1000 {
        let mut img = good.clone();
        let at = (u16::from_le_bytes([noise[4 * k % 3998], noise[(4 * k + 1) % 3998]]) as usize)
            % (34 * 512);
        img[at] ^= noise[(4 * k + 2) % 3998] | 1;
        let r = read_ddi(&img[..]);
        // Bytes 440..446 (disk signature), unused MBR entries, the header's
        // reserved tail and unused parts of entries are not covered by
        // CRCs; everything else must be refused.
        let covered = (512..512 + 92).contains(&at) || (1024..1024 + 3 * 128).contains(&at);
        if covered {
            assert!(r.is_err(), "flip at byte {at} not detected");
        }
    }
}

#[test]
fn failed_seals_leave_nothing_behind() {
    let f = fixture();
    let out_dir = f.dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let opts = DdiOptions {
        arch: Arch::X86_64,
        key: Some(&f.key),
        verity: None,
    };
    let empty = f.dir.path().join("empty.img");
    fs::write(&empty, b"").unwrap();
    let e = write_ddi(&empty, &out_dir.join("x.raw"), &opts).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = write_ddi(
        &f.dir.path().join("missing.img"),
        &out_dir.join("x.raw"),
        &opts,
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing.img"), "{e}");
    let e = write_ddi(&f.fs, &out_dir.join("no/such/dir/x.raw"), &opts).unwrap_err();
    assert!(e.to_string().contains("cannot write"), "{e}");
    // Sidecar of an image that is not a 4096 multiple: refused, no files.
    let odd = out_dir.join("odd.raw");
    fs::write(&odd, pseudo_random(5000, 1)).unwrap();
    let e = write_sidecar(&odd, Some(&f.key), None).unwrap_err();
    assert!(e.to_string().contains("pad the image"), "{e}");
    assert_eq!(names_in(&out_dir), vec!["odd.raw".to_string()]);
}

#[test]
fn sidecar_passes_veritysetup_openssl_and_dissect() {
    let f = fixture();
    let image = f.dir.path().join("demo_1.0_x86-64.raw");
    fs::copy(&f.fs, &image).unwrap();
    let sealed = write_sidecar(&image, Some(&f.key), None).unwrap();
    let p = SidecarPaths::for_image(&image);
    assert_eq!(sealed.paths, p);
    assert_eq!(p.verity, f.dir.path().join("demo_1.0_x86-64.verity"));
    let root = sealed.root_hash;
    assert_eq!(
        fs::read_to_string(&p.roothash).unwrap(),
        format!("{root}\n")
    );

    assert!(signing_util::veritysetup_verify(&image, &p.verity, &root));
    let content = f.dir.path().join("content");
    fs::write(&content, root.to_hex()).unwrap();
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
            .arg(&p.signature)
            .arg("-content")
            .arg(&content)
            .arg("-certfile")
            .arg(&f.cert)
            .arg("-CAfile")
            .arg(&f.cert),
    );
    // systemd finds the .verity/.roothash beside the image.
    let json = dissect_json(&image, &[]);
    assert_eq!(root_mount(&json)["verity"], "external", "{json}");
    assert_eq!(root_mount(&json)["fstype"], "squashfs", "{json}");

    let s = read_sidecar(&image).unwrap();
    assert_eq!(s.root_hash, root);
    let v = verify_sidecar(&image, Some(&trusted(&f.cert))).unwrap();
    assert!(v.signer.is_some());

    // Re-sealed without a key: the stale signature goes away.
    write_sidecar(&image, None, None).unwrap();
    assert!(!p.signature.exists());
    let e = verify_sidecar(&image, Some(&trusted(&f.cert))).unwrap_err();
    assert!(matches!(e, SidecarError::Unsigned { .. }), "{e}");
    verify_sidecar(&image, None).unwrap();

    // A changed image no longer matches its tree.
    let mut bytes = fs::read(&image).unwrap();
    bytes[100] ^= 1;
    fs::write(&image, &bytes).unwrap();
    let e = verify_sidecar(&image, None).unwrap_err();
    assert!(e.to_string().contains("data block 0"), "{e}");
    assert!(!signing_util::veritysetup_verify(&image, &p.verity, &root));

    // A damaged .roothash is a clear error naming the file.
    fs::write(&p.roothash, "xyz\n").unwrap();
    let e = read_sidecar(&image).unwrap_err();
    assert!(e.to_string().contains(".roothash"), "{e}");
}
