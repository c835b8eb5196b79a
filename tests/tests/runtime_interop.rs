//! The node runtime is interchangeable with the real systemd-sysext 252:
//! each tool reads and undoes the other's merge, and both build the same
//! merged tree from the same images (overlapping files, an /opt-only
//! extension, an extension for another OS, one for another architecture,
//! UAPI version order of names, the xattr fallback of extension-release).
//! Every test runs in its own private mount namespace with `--root`.

mod runtime_common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use merge_runtime::runtime::{Action, Outcome, Stage};
use runtime_common::*;

const FITS: &str = "ID=debian\nVERSION_ID=12\n";

/// Lays out the image set used by several tests; returns the image files.
fn image_set(host: &Host, work: &std::path::Path) -> Vec<PathBuf> {
    // Directory image, overlapping file with the host and with `beta`.
    ext_tree(
        &host.p("etc/extensions/alpha"),
        "alpha",
        FITS,
        &[
            ("usr/share/common.txt", "alpha\n"),
            ("usr/share/alpha.txt", "a\n"),
            ("usr/bin/alpha", "#!/bin/sh\n"),
        ],
    );
    // Raw squashfs, sorts after alpha so its common.txt wins.
    let beta = host.p("var/lib/extensions/beta.raw");
    squashfs_ext(
        work,
        &beta,
        "beta",
        FITS,
        &[
            ("usr/share/common.txt", "beta\n"),
            ("usr/lib/beta/lib.txt", "b\n"),
        ],
    );
    // /opt only.
    let optonly = host.p("var/lib/extensions/optonly.raw");
    squashfs_ext(
        work,
        &optonly,
        "optonly",
        "ID=_any\n",
        &[("opt/optonly/bin/tool", "opt\n")],
    );
    // Fits another OS: refused.
    ext_tree(
        &host.p("run/extensions/fedora"),
        "fedora",
        "ID=fedora\nVERSION_ID=40\n",
        &[("usr/share/fedora.txt", "no\n")],
    );
    // Another architecture: refused.
    let other_arch = if cfg!(target_arch = "x86_64") {
        "arm64"
    } else {
        "x86-64"
    };
    let arm = host.p("var/lib/extensions/armonly.raw");
    squashfs_ext(
        work,
        &arm,
        "armonly",
        &format!("ID=_any\nARCHITECTURE={other_arch}\n"),
        &[("usr/share/arm.txt", "no\n")],
    );
    // UAPI version order: ext-1.10 sorts after ext-1.9 (strcmp would not).
    ext_tree(
        &host.p("var/lib/extensions/ext-1.9"),
        "ext-1.9",
        FITS,
        &[("usr/share/ver.txt", "1.9\n")],
    );
    ext_tree(
        &host.p("var/lib/extensions/ext-1.10"),
        "ext-1.10",
        FITS,
        &[("usr/share/ver.txt", "1.10\n")],
    );
    // extension-release under another name, allowed by the xattr. Built
    // under the target dir: /tmp may be a tmpfs without user xattrs.
    let xattr_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = xattr_dir.path().join("src-renamed");
    ext_tree(
        &src,
        "original",
        "ID=_any\n",
        &[("usr/share/renamed.txt", "renamed\n")],
    );
    let relfile = src.join("usr/lib/extension-release.d/extension-release.original");
    rustix::fs::setxattr(
        &relfile,
        "user.extension-release.strict",
        b"0",
        rustix::fs::XattrFlags::empty(),
    )
    .expect(
        "setting user.extension-release.strict (needs user xattrs on the temp dir's file system)",
    );
    let renamed = host.p("var/lib/extensions/renamed.raw");
    squashfs(&src, &renamed);
    // An erofs image.
    require_tool("mkfs.erofs", "erofs-utils");
    let src = work.join("src-gamma");
    ext_tree(
        &src,
        "gamma",
        FITS,
        &[
            ("usr/share/gamma.txt", "erofs\n"),
            ("usr/share/common.txt", "gamma\n"),
        ],
    );
    let gamma = host.p("var/lib/extensions/gamma.raw");
    run_ok(
        std::process::Command::new("mkfs.erofs")
            .arg("--all-root")
            .arg(&gamma)
            .arg(&src),
    );
    vec![beta, optonly, arm, renamed, gamma]
}

fn strip_volatile(mut s: BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
    s.remove(".systemd-sysext/sysext-forge.json");
    if let Some(Entry::File { content, .. }) = s.get_mut(".systemd-sysext/dev") {
        let text = String::from_utf8_lossy(content).to_string();
        let (a, b) = text
            .trim_end_matches('\n')
            .split_once(':')
            .expect("dev is MAJOR:MINOR");
        assert!(
            a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok() && text.ends_with('\n'),
            "{text:?}"
        );
        *content = b"MAJOR:MINOR\n".to_vec();
    }
    s
}

#[test]
fn same_stack_as_systemd_sysext() {
    if !in_private_ns("same_stack_as_systemd_sysext") {
        return;
    }
    let host = Host::new();
    let work = tempfile::tempdir().unwrap();
    image_set(&host, work.path());

    // systemd-sysext first.
    let log = systemd_sysext(host.path(), "merge");
    assert!(log.contains("Using extensions"), "{log}");
    let theirs_usr = strip_volatile(snapshot(&host.p("usr")));
    let theirs_opt = strip_volatile(snapshot(&host.p("opt")));
    systemd_sysext(host.path(), "unmerge");
    assert!(
        mounts_below(host.path()).is_empty(),
        "{:?}",
        mounts_below(host.path())
    );

    // Then ours, on the same images.
    let report = merge_runtime::merge(&host.options()).expect("our merge");
    assert_eq!(report.action, Action::Merged);
    let ours_usr = strip_volatile(snapshot(&host.p("usr")));
    let ours_opt = strip_volatile(snapshot(&host.p("opt")));

    assert_eq!(
        ours_usr.keys().collect::<Vec<_>>(),
        theirs_usr.keys().collect::<Vec<_>>(),
        "same file names under /usr"
    );
    assert_eq!(ours_usr, theirs_usr, "same /usr content");
    assert_eq!(ours_opt, theirs_opt, "same /opt content");

    // The facts the comparison rests on.
    let read = |p: &str| fs::read_to_string(host.p(p)).unwrap();
    assert_eq!(read("usr/share/common.txt"), "gamma\n");
    assert_eq!(read("usr/share/gamma.txt"), "erofs\n");
    assert_eq!(read("usr/share/ver.txt"), "1.10\n");
    assert_eq!(read("usr/share/host-only.txt"), "host only\n");
    assert_eq!(read("usr/share/renamed.txt"), "renamed\n");
    assert_eq!(read("opt/optonly/bin/tool"), "opt\n");
    assert!(!host.p("usr/share/fedora.txt").exists());
    assert!(!host.p("usr/share/arm.txt").exists());
    assert_eq!(
        read("usr/.systemd-sysext/extensions"),
        "alpha\nbeta\next-1.9\next-1.10\ngamma\noptonly\nrenamed\n"
    );
    // Refusals carry their reasons.
    let refused: BTreeMap<_, _> = report
        .images
        .iter()
        .filter_map(|i| match &i.outcome {
            Outcome::Refused { stage, reason } => {
                Some((i.name.clone(), (stage.clone(), reason.clone())))
            }
            Outcome::Merged => None,
        })
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused["fedora"].0, Stage::Compatibility);
    assert!(
        refused["fedora"].1.contains("ID=fedora"),
        "{:?}",
        refused["fedora"]
    );
    assert_eq!(refused["armonly"].0, Stage::Compatibility);
    assert!(
        refused["armonly"].1.contains("ARCHITECTURE="),
        "{:?}",
        refused["armonly"]
    );

    merge_runtime::unmerge(&host.options()).unwrap();
    assert!(mounts_below(host.path()).is_empty());
}

#[test]
fn our_merge_is_read_and_undone_by_systemd_sysext() {
    if !in_private_ns("our_merge_is_read_and_undone_by_systemd_sysext") {
        return;
    }
    let host = Host::new();
    let work = tempfile::tempdir().unwrap();
    let files = image_set(&host, work.path());

    merge_runtime::merge(&host.options()).expect("our merge");
    assert_eq!(
        loops_backed_by(&files).len(),
        4,
        "beta, gamma, optonly and renamed are mounted from loop devices"
    );
    let status = systemd_status(host.path());
    let rows = status.as_array().expect("status is a JSON array");
    let by_h: BTreeMap<String, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["hierarchy"].as_str().unwrap().to_string(), r))
        .collect();
    let names =
        serde_json::json!(["alpha", "beta", "ext-1.9", "ext-1.10", "gamma", "optonly", "renamed"]);
    assert_eq!(by_h["/usr"]["extensions"], names, "{status}");
    assert_eq!(by_h["/opt"]["extensions"], names, "{status}");
    assert!(by_h["/usr"]["since"].as_u64().is_some());

    // systemd refuses to merge on top of ours, like on top of its own.
    let again = std::process::Command::new("systemd-sysext")
        .arg("merge")
        .arg(format!("--root={}", host.path().display()))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already merged"));

    let log = systemd_sysext(host.path(), "unmerge");
    assert!(log.contains("Unmerged"), "{log}");
    assert!(
        mounts_below(host.path()).is_empty(),
        "{:?}",
        mounts_below(host.path())
    );
    assert_eq!(
        wait_loops_gone(&files),
        Vec::<String>::new(),
        "loop devices left after unmerge"
    );
    assert_eq!(
        fs::read_to_string(host.p("usr/share/common.txt")).unwrap(),
        "host\n"
    );
    let after = systemd_status(host.path());
    assert!(
        after
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["extensions"] == "none"),
        "{after}"
    );
}

#[test]
fn systemd_sysext_merge_is_read_and_undone_by_us() {
    if !in_private_ns("systemd_sysext_merge_is_read_and_undone_by_us") {
        return;
    }
    let host = Host::new();
    let work = tempfile::tempdir().unwrap();
    let files = image_set(&host, work.path());

    systemd_sysext(host.path(), "merge");
    let status = merge_runtime::status(&host.options()).unwrap();
    let usr = status
        .hierarchies
        .iter()
        .find(|h| h.hierarchy == "/usr")
        .unwrap();
    assert_eq!(usr.merged_by.as_deref(), Some("systemd-sysext"));
    assert_eq!(
        usr.extensions,
        serde_json::json!(["alpha", "beta", "ext-1.9", "ext-1.10", "gamma", "optonly", "renamed"])
    );
    assert!(usr.since.is_some());
    // Our merge refuses, like systemd's, when already merged.
    let err = merge_runtime::merge(&host.options())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already merged"), "{err}");

    let r = merge_runtime::unmerge(&host.options()).unwrap();
    assert_eq!(r.unmerged, ["/usr", "/opt"]);
    assert!(
        mounts_below(host.path()).is_empty(),
        "{:?}",
        mounts_below(host.path())
    );
    assert_eq!(wait_loops_gone(&files), Vec::<String>::new());
    let status = merge_runtime::status(&host.options()).unwrap();
    assert!(status.hierarchies.iter().all(|h| h.extensions == "none"));
}

#[test]
fn block_device_image_merges() {
    if !in_private_ns("block_device_image_merges") {
        return;
    }
    let host = Host::new();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("blk.squashfs");
    squashfs_ext(
        work.path(),
        &img,
        "blk",
        FITS,
        &[("usr/share/blk.txt", "block\n")],
    );
    let dev = run_ok(
        std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(&img),
    );
    let dev = dev.trim().to_string();
    let rdev = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&dev).unwrap().rdev()
    };
    let (major, minor) = (
        ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
        (rdev & 0xff) | ((rdev >> 12) & !0xff),
    );
    let node = host.p("var/lib/extensions/blk");
    run_ok(
        std::process::Command::new("mknod")
            .arg(&node)
            .arg("b")
            .arg(major.to_string())
            .arg(minor.to_string()),
    );
    let r = merge_runtime::merge(&host.options());
    let _ = std::process::Command::new("losetup")
        .arg("-d")
        .arg(&dev)
        .status();
    let r = r.unwrap();
    assert_eq!(r.extensions, ["blk"], "{:?}", r.images);
    assert_eq!(r.images[0].kind, "block");
    assert_eq!(
        fs::read_to_string(host.p("usr/share/blk.txt")).unwrap(),
        "block\n"
    );
    merge_runtime::unmerge(&host.options()).unwrap();
    assert!(mounts_below(host.path()).is_empty());
}
