//! Tampered images are refused before anything is mounted from them, with
//! a clear reason, while the good ones still merge; nothing of the refused
//! ones stays mounted or attached to a loop device. DDIs are made with the
//! real tools only (mksquashfs, veritysetup, openssl smime, sfdisk).

mod runtime_common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use merge_runtime::runtime::{Action, Outcome, Stage};
use merge_runtime::VerityMode;
use runtime_common::*;

#[test]
fn tampered_images_are_refused_and_the_rest_merges() {
    if !in_private_ns("tampered_images_are_refused_and_the_rest_merges") {
        return;
    }
    let host = Host::new();
    let w = tempfile::tempdir().unwrap();
    let work = w.path();
    let trusted = openssl_key(work, "trusted");
    let stranger = openssl_key(work, "stranger");
    trust(&host, &trusted, "vendor");
    let ext = host.p("var/lib/extensions");
    let fits = "ID=debian\nVERSION_ID=12\n";
    let fs_of = |name: &str| {
        let p = work.join(format!("{name}.squashfs"));
        // 100 000 bytes of poorly compressible text: the image is large
        // enough that the bytes flipped below are file data.
        let mut x: u64 = name.bytes().fold(0x9e37_79b9_7f4a_7c15, |a, c| {
            a.rotate_left(5) ^ u64::from(c)
        });
        let big: String = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x & 15) as usize])
            })
            .collect();
        squashfs_ext(
            work,
            &p,
            name,
            fits,
            &[(&format!("usr/share/{name}.txt"), &big)],
        );
        p
    };

    // 1. Good: signed by the trusted key.
    let good = ddi(&fs_of("good"), &ext.join("good.raw"), Some(&trusted), work);
    // 2. One flipped data byte.
    let flipped = ddi(
        &fs_of("flipped"),
        &ext.join("flipped.raw"),
        Some(&trusted),
        work,
    );
    let at = flipped.data.0 + 8192 + 17;
    let b = read_at(&flipped.path, at, 1)[0];
    write_at(&flipped.path, at, &[b ^ 0x01]);
    // 3. Signed by a key nobody trusts.
    ddi(
        &fs_of("untrusted"),
        &ext.join("untrusted.raw"),
        Some(&stranger),
        work,
    );
    // 4. A valid signature, but over another root hash: the signature
    //    partition's JSON keeps this image's rootHash, its PKCS#7 is the
    //    one of `good`.
    let wrongsig = ddi(
        &fs_of("wrongsig"),
        &ext.join("wrongsig.raw"),
        Some(&trusted),
        work,
    );
    {
        let (off, len) = wrongsig.sig.unwrap();
        let mut json: serde_json::Value = {
            let raw = read_at(&wrongsig.path, off, len as usize);
            let end = raw.iter().position(|&c| c == 0).unwrap();
            serde_json::from_slice(&raw[..end]).unwrap()
        };
        let good_sig: serde_json::Value = {
            let (goff, glen) = good.sig.unwrap();
            let raw = read_at(&good.path, goff, glen as usize);
            let end = raw.iter().position(|&c| c == 0).unwrap();
            serde_json::from_slice(&raw[..end]).unwrap()
        };
        json["signature"] = good_sig["signature"].clone();
        let mut bytes = json.to_string().into_bytes();
        bytes.resize(len as usize, 0);
        write_at(&wrongsig.path, off, &bytes);
    }
    // 5. The signature partition of another image: its rootHash does not
    //    match this image's partitions.
    let swapped = ddi(
        &fs_of("swapped"),
        &ext.join("swapped.raw"),
        Some(&trusted),
        work,
    );
    {
        let (goff, glen) = good.sig.unwrap();
        let (off, len) = swapped.sig.unwrap();
        assert_eq!(glen, len);
        write_at(
            &swapped.path,
            off,
            &read_at(&good.path, goff, glen as usize),
        );
    }
    // 6. Truncated.
    let truncated = ddi(
        &fs_of("truncated"),
        &ext.join("truncated.raw"),
        Some(&trusted),
        work,
    );
    let len = fs::metadata(&truncated.path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&truncated.path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // 7. Bare image with sidecars, flipped byte; 8. bare, truncated.
    let bareflip = ext.join("bareflip.raw");
    fs::copy(fs_of("bareflip"), &bareflip).unwrap();
    sidecars(&bareflip);
    let b = read_at(&bareflip, 20_000, 1)[0];
    write_at(&bareflip, 20_000, &[b ^ 0x80]);
    let baretrunc = ext.join("baretrunc.raw");
    fs::copy(fs_of("baretrunc"), &baretrunc).unwrap();
    sidecars(&baretrunc);
    let l = fs::metadata(&baretrunc).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&baretrunc)
        .unwrap()
        .set_len(l - 4096)
        .unwrap();
    // 9. A good bare image with sidecars, unsigned (fine under `any`).
    let bareok = ext.join("bareok.raw");
    fs::copy(fs_of("bareok"), &bareok).unwrap();
    sidecars(&bareok);

    let all: Vec<PathBuf> = fs::read_dir(&ext)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "raw"))
        .collect();
    let report = merge_runtime::merge(&host.options()).expect("merge");
    assert_eq!(report.action, Action::Merged);
    for i in &report.images {
        println!("{}: {:?}", i.name, i.outcome);
    }
    assert_eq!(report.extensions, ["bareok", "good"]);
    let by: BTreeMap<&str, &merge_runtime::runtime::ImageReport> =
        report.images.iter().map(|i| (i.name.as_str(), i)).collect();
    let refused = |name: &str| match &by[name].outcome {
        Outcome::Refused { stage, reason } => (stage.clone(), reason.clone()),
        Outcome::Merged => panic!("{name} was merged"),
    };
    for (name, stage, words) in [
        ("flipped", Stage::Verity, "does not match"),
        (
            "untrusted",
            Stage::Signature,
            "not made by a trusted certificate",
        ),
        (
            "wrongsig",
            Stage::Signature,
            "not valid or not made by a trusted",
        ),
        ("swapped", Stage::Signature, "do not belong together"),
        ("truncated", Stage::Format, "truncated.raw"),
        ("bareflip", Stage::Verity, "does not match"),
        ("baretrunc", Stage::Verity, "does not match the hash device"),
    ] {
        let (s, reason) = refused(name);
        println!("{name}: {s:?}: {reason}");
        assert_eq!(s, stage, "{name}: {reason}");
        assert!(
            reason.contains(words),
            "{name}: {reason:?} should mention {words:?}"
        );
    }
    assert_eq!(by["good"].verification, VerityMode::UserSpace);
    assert!(
        by["good"]
            .signer
            .as_deref()
            .unwrap_or("")
            .contains("trusted"),
        "{:?}",
        by["good"].signer
    );
    assert_eq!(
        by["good"].root_hash.as_deref(),
        Some(good.root_hash.as_str())
    );
    assert_eq!(by["bareok"].verification, VerityMode::UserSpace);
    assert_eq!(by["bareok"].signer, None);

    // Nothing of the refused images is mounted or attached.
    let refused_files: Vec<PathBuf> = all
        .iter()
        .filter(|p| !p.ends_with("good.raw") && !p.ends_with("bareok.raw"))
        .cloned()
        .collect();
    assert_eq!(loops_backed_by(&refused_files), Vec::<String>::new());
    assert_eq!(
        loops_backed_by(&[good.path.clone(), bareok.clone()]).len(),
        2
    );
    let mounts = mounts_below(host.path());
    assert_eq!(mounts.len(), 1, "only the /usr overlay: {mounts:?}");
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let staging: Vec<&str> = mi
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with("/run/sysext-forge"))
        })
        .collect();
    assert!(
        staging.is_empty(),
        "no staging mount may stay visible: {staging:?}"
    );
    assert_eq!(
        fs::read_to_string(host.p("usr/share/good.txt"))
            .unwrap()
            .len(),
        100_000
    );
    assert!(!host.p("usr/share/flipped.txt").exists());

    // `status` tells how each merged image was checked.
    let st = merge_runtime::status(&host.options()).unwrap();
    let usr = st
        .hierarchies
        .iter()
        .find(|h| h.hierarchy == "/usr")
        .unwrap();
    let modes: BTreeMap<_, _> = usr
        .images
        .iter()
        .map(|i| (i.name.clone(), i.verification))
        .collect();
    assert_eq!(modes["good"], VerityMode::UserSpace);
    assert_eq!(modes.len(), 2);

    merge_runtime::unmerge(&host.options()).unwrap();
    assert!(mounts_below(host.path()).is_empty());
    assert_eq!(
        wait_loops_gone(&all),
        Vec::<String>::new(),
        "loop devices left after unmerge"
    );
}
