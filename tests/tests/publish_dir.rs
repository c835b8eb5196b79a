//! Publishing to a feed directory: idempotence, ordering (no verifying
//! manifest ever names a missing file), retention per stream, signatures
//! checked with the real gpg, BEST-BEFORE, refusals, and a feed served over
//! loopback HTTP that the sysupdate crate lists correctly.

mod publish_common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::num::NonZeroUsize;
use std::path::Path;

use publish_common::*;
use releases::{
    publish_dir, BestBefore, ExtensionName, FeedEvent, FeedUrl, ManifestSigner, PublishError,
    PublishOptions, Retention,
};
use sysupdate::{Arch, Date, Manifest, PatternTemplate, Transfer, Version};

fn opts(signer: &dyn ManifestSigner) -> PublishOptions<'_> {
    PublishOptions::new(
        FeedUrl::new("https://feed.example.org/ext").unwrap(),
        signer,
    )
}

#[test]
fn publishing_twice_changes_nothing() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    let imgs = vec![
        image(work.path(), "wasmtime", "25.0.1", Arch::X86_64),
        image(work.path(), "wasmtime", "25.0.1", Arch::Arm64),
        image(work.path(), "kubernetes", "v1.30.4", Arch::X86_64),
        image(work.path(), "k3s", "v1.30.4+k3s1", Arch::X86_64),
    ];
    let r1 = publish_dir(&feed, &imgs, &opts(&s)).unwrap();
    assert!(!r1.is_noop());
    let before = snapshot(&feed);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r2 = publish_dir(&feed, &imgs, &opts(&s)).unwrap();
    assert!(r2.is_noop(), "{r2:#?}");
    let after = snapshot(&feed);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (k, (bytes, mtime)) in &before {
        assert_eq!(&after[k].0, bytes, "{k} changed");
        assert_eq!(&after[k].1, mtime, "{k} was rewritten");
    }
    // And once more with no new images: the feed is re-derived, still equal.
    assert!(publish_dir(&feed, &[], &opts(&s)).unwrap().is_noop());

    // The layout.
    assert_eq!(
        names(&feed.join("k3s")),
        [
            "SHA256SUMS",
            "SHA256SUMS.gpg",
            "k3s-v1.30-x86-64.bu",
            "k3s-v1.30-x86-64.ign",
            "k3s-v1.30.4+k3s1-x86-64.raw",
            "k3s-v1.30.conf",
            "k3s-v1.30.transfer",
            "k3s-x86-64.bu",
            "k3s-x86-64.ign",
            "k3s.conf",
            "k3s.transfer",
        ]
    );
    assert_eq!(
        names(&feed),
        [
            "catalogue.json",
            "catalogue.json.gpg",
            "k3s",
            "kubernetes",
            "wasmtime"
        ]
    );
    // Images are read-only on disk.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(feed.join("wasmtime/wasmtime-25.0.1-arm64.raw"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
}

#[test]
fn manifests_verify_with_gpg_and_fail_when_changed_or_with_another_key() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    publish_dir(
        &feed,
        &[image(work.path(), "docker", "27.3.1", Arch::X86_64)],
        &opts(&s),
    )
    .unwrap();
    let dir = feed.join("docker");
    let sums = fs::read(dir.join("SHA256SUMS")).unwrap();
    let sig = fs::read(dir.join("SHA256SUMS.gpg")).unwrap();
    let keyring = s.public_keyring();
    assert!(
        gpg_verify(&keyring, &sums, &sig),
        "gpg rejects our signature"
    );
    let mut changed = sums.clone();
    changed[0] ^= 1;
    assert!(!gpg_verify(&keyring, &changed, &sig));
    assert!(!gpg_verify(&signer().public_keyring(), &sums, &sig));
    // The catalogue is signed the same way.
    assert!(gpg_verify(
        &keyring,
        &fs::read(feed.join("catalogue.json")).unwrap(),
        &fs::read(feed.join("catalogue.json.gpg")).unwrap()
    ));
    // Manifest lines are what sha256sum writes, and sha256sum agrees.
    let out = std::process::Command::new("sha256sum")
        .arg("--check")
        .arg("SHA256SUMS")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Checks every extension directory at every visible change.
fn watching<'a>(
    feed: &'a Path,
    signer: &'a dyn ManifestSigner,
    seen: &'a RefCell<(usize, usize)>,
) -> impl Fn(&FeedEvent) + 'a {
    move |_e: &FeedEvent| {
        for ent in fs::read_dir(feed).unwrap() {
            let p = ent.unwrap().path();
            if p.is_dir() {
                let mut s = seen.borrow_mut();
                s.0 += 1;
                if let PairState::Good { .. } = check_dir(&p, signer) {
                    s.1 += 1;
                }
            }
        }
    }
}

#[test]
fn adding_versions_never_exposes_a_missing_file() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    let seen = RefCell::new((0usize, 0usize));
    let obs = watching(&feed, &s, &seen);
    let mut o = opts(&s);
    o.retention = Retention {
        keep_per_stream: NonZeroUsize::new(1).unwrap(),
    };
    o.observer = Some(&obs);
    for patch in 1..=4 {
        let imgs: Vec<_> = [Arch::X86_64, Arch::Arm64]
            .into_iter()
            .flat_map(|a| {
                [
                    image(work.path(), "kubernetes", &format!("v1.30.{patch}"), a),
                    image(work.path(), "kubernetes", &format!("v1.31.{patch}"), a),
                ]
            })
            .collect();
        publish_dir(&feed, &imgs, &o).unwrap();
        assert!(matches!(
            check_dir(&feed.join("kubernetes"), &s),
            PairState::Good { entries: 4 }
        ));
    }
    let (checks, good) = *seen.borrow();
    // The check ran at every change and saw verifying manifests (so it
    // could have failed).
    assert!(checks > 40 && good > 30, "{checks} checks, {good} verified");
    assert_eq!(
        names(&feed.join("kubernetes"))
            .into_iter()
            .filter(|n| n.ends_with(".raw"))
            .collect::<Vec<_>>(),
        [
            "kubernetes-v1.30.4-arm64.raw",
            "kubernetes-v1.30.4-x86-64.raw",
            "kubernetes-v1.31.4-arm64.raw",
            "kubernetes-v1.31.4-x86-64.raw"
        ]
    );
}

#[test]
fn the_invariant_check_catches_a_manifest_naming_a_missing_file() {
    // A control for the test above: the checker panics on a bad state.
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    publish_dir(
        &feed,
        &[image(work.path(), "falco", "0.39.1", Arch::X86_64)],
        &opts(&s),
    )
    .unwrap();
    let dir = feed.join("falco");
    fs::remove_file(dir.join("falco-0.39.1-x86-64.raw")).unwrap();
    let r = std::panic::catch_unwind(|| check_dir(&dir, &s));
    assert!(r.is_err(), "the checker missed a missing file");
    // And the publisher notices too and refuses to carry on blindly? No:
    // the file is simply gone; a re-publish drops it from the manifest.
    publish_dir(&feed, &[], &opts(&s)).unwrap();
    assert_eq!(check_dir(&dir, &s), PairState::Good { entries: 0 });
}

#[test]
fn retention_keeps_newest_per_stream_and_what_streams_point_at() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    let mut o = opts(&s);
    o.retention = Retention {
        keep_per_stream: NonZeroUsize::new(2).unwrap(),
    };
    let mut imgs = Vec::new();
    for v in [
        "v1.29.8", "v1.29.9", "v1.29.10", "v1.30.1", "v1.30.2", "v1.30.3",
    ] {
        imgs.push(image(
            work.path(),
            "rke2",
            &format!("{v}+rke2r1"),
            Arch::X86_64,
        ));
    }
    // arm64 lags: only an old v1.30 build exists.
    imgs.push(image(work.path(), "rke2", "v1.30.1+rke2r1", Arch::Arm64));
    // A single-stream extension.
    for v in ["1.0", "1.1", "1.2", "2.0~rc1"] {
        let mut i = image(work.path(), "wasmtime", v, Arch::X86_64);
        if v.contains('~') {
            // '~' is refused (sysupdate does not accept it in @v).
            let e = publish_dir(&feed, &[i.clone()], &o).unwrap_err();
            assert!(e.to_string().contains("'~'"), "{e}");
            i.version = Version::new("2.0-rc1").unwrap();
            i.path = fake_image(work.path(), "wasmtime", "2.0-rc1", Arch::X86_64, "v1");
        }
        imgs.push(i);
    }
    let report = publish_dir(&feed, &imgs, &o).unwrap();
    let raws = |d: &str| -> Vec<String> {
        names(&feed.join(d))
            .into_iter()
            .filter(|n| n.ends_with(".raw"))
            .collect()
    };
    assert_eq!(
        raws("rke2"),
        [
            "rke2-v1.29.10+rke2r1-x86-64.raw",
            "rke2-v1.29.9+rke2r1-x86-64.raw",
            "rke2-v1.30.1+rke2r1-arm64.raw",
            "rke2-v1.30.2+rke2r1-x86-64.raw",
            "rke2-v1.30.3+rke2r1-x86-64.raw",
        ]
    );
    // UAPI order: 2.0-rc1 is newer than 1.2 (2 > 1 decides).
    assert_eq!(
        raws("wasmtime"),
        ["wasmtime-1.2-x86-64.raw", "wasmtime-2.0-rc1-x86-64.raw"]
    );
    let rke2 = report
        .extensions
        .iter()
        .find(|e| e.name.as_ref().unwrap().as_str() == "rke2")
        .unwrap();
    assert_eq!(rke2.retired.len(), 2, "{rke2:?}");
    // Each stream has its transfer files; minor ones pin the minor line.
    let t = fs::read_to_string(feed.join("rke2/rke2-v1.29.conf")).unwrap();
    assert!(t.contains("MatchPattern=rke2-v1.29.@v-%a.raw"), "{t}");
    assert_eq!(
        t,
        fs::read_to_string(feed.join("rke2/rke2-v1.29.transfer")).unwrap()
    );
    assert!(!feed.join("wasmtime/wasmtime-v1.2.conf").exists());
    // The manifests list exactly the images kept.
    for d in ["rke2", "wasmtime"] {
        let m = Manifest::parse(&fs::read(feed.join(d).join("SHA256SUMS")).unwrap()).unwrap();
        let listed: Vec<String> = m.entries().map(|(n, _)| n.to_string()).collect();
        let mut want = raws(d);
        want.sort();
        assert_eq!(listed, want);
    }
}

#[test]
fn sidecars_are_published_and_listed() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    let mut i = image(work.path(), "containerd", "1.7.23", Arch::X86_64);
    let v = work.path().join("img.verity");
    let p = work.path().join("img.roothash.p7s");
    fs::write(&v, b"verity tree").unwrap();
    fs::write(&p, b"pkcs7").unwrap();
    i.sidecars = vec![(".verity".into(), v), (".roothash.p7s".into(), p)];
    publish_dir(&feed, &[i], &opts(&s)).unwrap();
    let m = Manifest::parse(&fs::read(feed.join("containerd/SHA256SUMS")).unwrap()).unwrap();
    let listed: Vec<String> = m.entries().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        listed,
        [
            "containerd-1.7.23-x86-64.raw",
            "containerd-1.7.23-x86-64.roothash.p7s",
            "containerd-1.7.23-x86-64.verity"
        ]
    );
    assert!(matches!(
        check_dir(&feed.join("containerd"), &s),
        PairState::Good { entries: 3 }
    ));
    // A sidecar is never a sysupdate candidate.
    let pat = PatternTemplate::new("containerd-@v-%a.raw")
        .unwrap()
        .for_arch(Arch::X86_64)
        .unwrap();
    let c = sysupdate::candidates::list(&m, &[pat]).unwrap();
    assert_eq!(c.len(), 1);
}

#[test]
fn best_before_is_written_and_refreshed_only_when_half_the_window_is_gone() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    let imgs = [image(work.path(), "docker", "27.3.1", Arch::X86_64)];
    let day0 = Date::new(2026, 3, 1).unwrap();
    let mut o = opts(&s);
    o.best_before = Some(BestBefore {
        days: 30,
        today: day0,
    });
    publish_dir(&feed, &imgs, &o).unwrap();
    let read = || Manifest::parse(&fs::read(feed.join("docker/SHA256SUMS")).unwrap()).unwrap();
    assert_eq!(read().best_before(), Date::new(2026, 3, 31));
    assert!(fs::read_to_string(feed.join("docker/SHA256SUMS"))
        .unwrap()
        .contains("BEST-BEFORE-2026-03-31"));
    // Day 10: 21 days left, more than half: nothing changes.
    o.best_before = Some(BestBefore {
        days: 30,
        today: day0.add_days(10).unwrap(),
    });
    assert!(publish_dir(&feed, &imgs, &o).unwrap().is_noop());
    // Day 20: 11 days left: re-signed for another 30 days.
    o.best_before = Some(BestBefore {
        days: 30,
        today: day0.add_days(20).unwrap(),
    });
    let r = publish_dir(&feed, &imgs, &o).unwrap();
    assert!(r.extensions[0].manifest_written);
    assert_eq!(read().best_before(), Date::new(2026, 4, 20));
    assert!(gpg_verify(
        &s.public_keyring(),
        &fs::read(feed.join("docker/SHA256SUMS")).unwrap(),
        &fs::read(feed.join("docker/SHA256SUMS.gpg")).unwrap()
    ));
}

#[test]
fn refuses_changed_images_symlinks_and_bad_versions() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    let i = image(work.path(), "docker", "27.3.1", Arch::X86_64);
    publish_dir(&feed, std::slice::from_ref(&i), &opts(&s)).unwrap();
    let before = snapshot(&feed);

    // Same version, other bytes.
    let mut changed = i.clone();
    changed.path = fake_image(work.path(), "docker", "27.3.1", Arch::X86_64, "rebuilt");
    let e = publish_dir(&feed, &[changed], &opts(&s)).unwrap_err();
    assert!(matches!(e, PublishError::ImageChanged { .. }), "{e}");
    assert!(
        e.to_string().contains("docker-27.3.1-x86-64.raw") && e.to_string().contains("immutable"),
        "{e}"
    );
    assert_eq!(snapshot(&feed), before);

    // Minor-stream extension without a minor line.
    let k = image(work.path(), "kubernetes", "latest", Arch::X86_64);
    let e = publish_dir(&feed, &[k], &opts(&s)).unwrap_err();
    assert!(e.to_string().contains("vMAJOR.MINOR.PATCH"), "{e}");

    // A symlink named like an image in the feed.
    std::os::unix::fs::symlink("/etc/passwd", feed.join("docker/docker-1.0-x86-64.raw")).unwrap();
    let e = publish_dir(&feed, &[], &opts(&s)).unwrap_err();
    assert!(
        e.to_string().contains("docker-1.0-x86-64.raw")
            && e.to_string().contains("not a regular file"),
        "{e}"
    );
    fs::remove_file(feed.join("docker/docker-1.0-x86-64.raw")).unwrap();

    // A feed file changed behind our back.
    let img = feed.join("docker/docker-27.3.1-x86-64.raw");
    fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::write(&img, b"tampered").unwrap();
    let e = publish_dir(&feed, &[], &opts(&s)).unwrap_err();
    assert!(e.to_string().contains("SHA256SUMS lists"), "{e}");
}

/// A minimal GET over loopback (reqwest blocking).
fn get(url: &str) -> Vec<u8> {
    let r = reqwest::blocking::get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.bytes().unwrap().to_vec()
}

#[test]
fn a_served_directory_feed_is_listed_correctly_by_the_sysupdate_crate() {
    let s = signer();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    let server = publish_common_serve(&feed);
    let url = FeedUrl::new(format!("{}/", server.url())).unwrap();
    let mut o = PublishOptions::new(url, &s);
    o.retention = Retention {
        keep_per_stream: NonZeroUsize::new(3).unwrap(),
    };
    let mut imgs = Vec::new();
    for v in [
        "v1.29.9", "v1.29.10", "v1.30.2", "v1.30.10", "v1.31.0", "v1.31.1",
    ] {
        imgs.push(image(work.path(), "kubernetes", v, Arch::X86_64));
    }
    // arm64 has no v1.31 yet.
    for v in ["v1.30.9", "v1.29.10"] {
        imgs.push(image(work.path(), "kubernetes", v, Arch::Arm64));
    }
    publish_dir(&feed, &imgs, &o).unwrap();

    let base = format!("{}/kubernetes/", server.url());
    let sums = get(&format!("{base}SHA256SUMS"));
    let sig = get(&format!("{base}SHA256SUMS.gpg"));
    assert!(gpg_verify(&s.public_keyring(), &sums, &sig));
    let manifest = Manifest::parse(&sums).unwrap();

    let expect = [
        ("kubernetes.conf", Arch::X86_64, "v1.31.1"),
        ("kubernetes.conf", Arch::Arm64, "v1.30.9"),
        ("kubernetes-v1.29.conf", Arch::X86_64, "10"),
        ("kubernetes-v1.29.transfer", Arch::Arm64, "10"),
        ("kubernetes-v1.30.conf", Arch::X86_64, "10"),
        ("kubernetes-v1.30.conf", Arch::Arm64, "9"),
        ("kubernetes-v1.31.conf", Arch::X86_64, "1"),
    ];
    for (file, arch, want) in expect {
        let text = String::from_utf8(get(&format!("{base}{file}"))).unwrap();
        let t = Transfer::parse(&text, Path::new(file)).unwrap();
        t.validate().unwrap();
        assert_eq!(t.source.path, base);
        assert_eq!(t.transfer.verify, Some(true));
        let pats: Vec<_> = t
            .source
            .patterns
            .iter()
            .map(|p| p.for_arch(arch).unwrap())
            .collect();
        let cands = sysupdate::candidates::list(&manifest, &pats).unwrap();
        let newest = sysupdate::candidates::choose(&cands, &Default::default()).unwrap();
        assert_eq!(newest.version.as_str(), want, "{file} on {arch}");
        // Download what was chosen and check its digest like sysupdate does.
        let bytes = get(&format!(
            "{base}{}",
            newest.name.as_str().replace('+', "%2B")
        ));
        assert_eq!(
            releases::fsutil::FileDigests::of_bytes(&bytes).sha256,
            newest.digest
        );
        // A minor stream offers only its own minor line, on every arch.
        if let Some(minor) = file.strip_prefix("kubernetes-").and_then(|f| {
            f.split_once(".c")
                .map(|x| x.0)
                .or(f.split_once(".t").map(|x| x.0))
        }) {
            for c in &cands {
                assert!(
                    c.name.as_str().starts_with(&format!("kubernetes-{minor}.")),
                    "{file}: {}",
                    c.name
                );
            }
        }
    }
    // The catalogue agrees.
    let cat = releases::catalogue::Catalogue::from_json(&get(&format!(
        "{}/catalogue.json",
        server.url()
    )))
    .unwrap();
    let k = &cat.extensions[0];
    let streams: BTreeSet<&str> = k.streams.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        streams,
        ["default", "v1.29", "v1.30", "v1.31"].into_iter().collect()
    );
    let v130 = k.streams.iter().find(|s| s.id == "v1.30").unwrap();
    assert_eq!(v130.newest[&Arch::Arm64].as_str(), "v1.30.9");
    assert_eq!(k.name, ExtensionName::new("kubernetes").unwrap());
}

fn publish_common_serve(dir: &Path) -> integration_tests::github::StaticServer {
    fs::create_dir_all(dir).unwrap();
    integration_tests::github::serve_dir(dir)
}
