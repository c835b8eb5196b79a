//! `refresh` swaps the merged trees with no gap (a reader never sees an
//! extension's file missing), does nothing when nothing changed, and
//! unmerges when no image is left. Runs in a private mount namespace with
//! `--root`.

mod runtime_common;

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use merge_runtime::runtime::{Action, Swap};
use runtime_common::*;

struct ReadLog {
    reads: u64,
    misses: Vec<String>,
}

/// Runs `f` while another thread keeps reading a file of the extension in
/// /usr and one in /opt; returns what the reader saw.
fn with_reader(host: &Host, f: impl FnOnce()) -> ReadLog {
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let misses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let (stop, reads, misses) = (stop.clone(), reads.clone(), misses.clone());
        let usr_file = host.p("usr/share/gap/data.txt");
        let opt_file = host.p("opt/gap/data.txt");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for f in [&usr_file, &opt_file] {
                    match fs::read_to_string(f) {
                        Ok(s) if !s.is_empty() => {}
                        other => misses
                            .lock()
                            .unwrap()
                            .push(format!("{}: {other:?}", f.display())),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    f();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let misses = std::mem::take(&mut *misses.lock().unwrap());
    ReadLog {
        reads: reads.load(Ordering::Relaxed),
        misses,
    }
}

#[test]
fn no_gap_during_100_refreshes() {
    if !in_private_ns("no_gap_during_100_refreshes") {
        return;
    }
    let host = Host::new();
    let work = tempfile::tempdir().unwrap();
    // Two versions of one extension; /etc/extensions/gap.raw points at
    // one of them and is switched before every refresh.
    let store = host.p("opt-store");
    fs::create_dir_all(&store).unwrap();
    for v in ["1", "2"] {
        squashfs_ext(
            work.path(),
            &store.join(format!("gap-{v}.raw")),
            "gap",
            "ID=debian\nVERSION_ID=12\n",
            &[
                ("usr/share/gap/data.txt", &format!("version {v}\n")),
                ("opt/gap/data.txt", v),
            ],
        );
    }
    let link = host.p("etc/extensions/gap.raw");
    let point = |v: &str| {
        let tmp = host.p("etc/extensions/.gap.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("/opt-store/gap-{v}.raw"), &tmp).unwrap();
        fs::rename(&tmp, &link).unwrap();
    };
    point("1");
    let opts = host.options();
    let r = merge_runtime::merge(&opts).unwrap();
    assert_eq!(r.extensions, ["gap"]);

    // Control: systemd-sysext 252's refresh (unmerge, then merge) leaves a
    // gap, and this reader sees it — the check below can fail.
    // (systemd 252 does not follow symlinks under --root: use a copy.)
    merge_runtime::unmerge(&opts).unwrap();
    fs::remove_file(&link).unwrap();
    fs::copy(store.join("gap-1.raw"), &link).unwrap();
    systemd_sysext(host.path(), "merge");
    let control = with_reader(&host, || {
        for _ in 0..20 {
            systemd_sysext(host.path(), "refresh");
        }
    });
    systemd_sysext(host.path(), "unmerge");
    println!(
        "control, systemd-sysext: {} reads during 20 refreshes, {} misses",
        control.reads,
        control.misses.len()
    );
    assert!(
        !control.misses.is_empty() && (control.misses.len() as u64) < control.reads / 2,
        "the reader should notice systemd-sysext's unmerge/merge gap, and mostly read the file"
    );
    fs::remove_file(&link).unwrap();
    point("1");

    merge_runtime::merge(&opts).unwrap();
    let mut beneath = 0;
    let ours = with_reader(&host, || {
        for i in 0..100 {
            point(if i % 2 == 0 { "2" } else { "1" });
            let r = merge_runtime::refresh(&opts).unwrap();
            assert_eq!(r.action, Action::Merged, "refresh {i}");
            for h in &r.hierarchies {
                assert!(
                    matches!(h.swap, Swap::Beneath | Swap::Stacked),
                    "{:?}",
                    h.swap
                );
                beneath += usize::from(h.swap == Swap::Beneath);
            }
            let want = if i % 2 == 0 {
                "version 2\n"
            } else {
                "version 1\n"
            };
            assert_eq!(
                fs::read_to_string(host.p("usr/share/gap/data.txt")).unwrap(),
                want
            );
        }
    });
    println!(
        "reader: {} reads during 100 refreshes, {} misses; {beneath} swaps beneath",
        ours.reads,
        ours.misses.len()
    );
    assert!(
        ours.reads > 200,
        "the reader must run throughout ({} reads)",
        ours.reads
    );
    assert!(
        ours.misses.is_empty(),
        "the file went missing: {:?}",
        &ours.misses[..ours.misses.len().min(5)]
    );
    if merge_runtime::runtime::kernel_has_move_mount_beneath() {
        assert_eq!(beneath, 200, "every swap goes beneath on this kernel");
    }
    // Only the current overlays are mounted: one per hierarchy.
    let m = mounts_below(host.path());
    assert_eq!(m.len(), 2, "{m:?}");

    merge_runtime::unmerge(&opts).unwrap();
    let images = [store.join("gap-1.raw"), store.join("gap-2.raw")];
    assert!(
        mounts_below(host.path()).is_empty(),
        "{:?}",
        mounts_below(host.path())
    );
    assert_eq!(
        wait_loops_gone(&images),
        Vec::<String>::new(),
        "loop devices left"
    );
}

#[test]
fn refresh_is_a_noop_when_nothing_changed_and_unmerges_when_empty() {
    if !in_private_ns("refresh_is_a_noop_when_nothing_changed_and_unmerges_when_empty") {
        return;
    }
    let host = Host::new();
    let work = tempfile::tempdir().unwrap();
    let img = host.p("var/lib/extensions/one.raw");
    squashfs_ext(
        work.path(),
        &img,
        "one",
        "ID=_any\n",
        &[("usr/share/one.txt", "1\n")],
    );
    let opts = host.options();

    // Refresh with nothing merged merges.
    let r = merge_runtime::refresh(&opts).unwrap();
    assert_eq!(r.action, Action::Merged);
    let mount_ids = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("{}/usr ", host.path().display())))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let before = mount_ids();
    assert_eq!(before.len(), 1);
    let r = merge_runtime::refresh(&opts).unwrap();
    assert_eq!(r.action, Action::Unchanged);
    assert_eq!(r.extensions, ["one"]);
    assert_eq!(mount_ids(), before, "an unchanged refresh must not remount");

    // Touching the image is a change.
    let t = fs::File::options().write(true).open(&img).unwrap();
    t.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(t);
    let r = merge_runtime::refresh(&opts).unwrap();
    assert_eq!(r.action, Action::Merged);
    assert_ne!(mount_ids(), before);

    // A new, refused image changes the input but not the merged set.
    ext_tree(
        &host.p("etc/extensions/nope"),
        "nope",
        "ID=other\n",
        &[("usr/share/nope", "x")],
    );
    let r = merge_runtime::refresh(&opts).unwrap();
    assert_eq!(r.action, Action::Merged);
    assert_eq!(r.extensions, ["one"]);
    let r = merge_runtime::refresh(&opts).unwrap();
    assert_eq!(r.action, Action::Unchanged);

    // No image left: refresh unmerges (systemd-sysext's semantics).
    fs::remove_file(&img).unwrap();
    fs::remove_dir_all(host.p("etc/extensions/nope")).unwrap();
    let r = merge_runtime::refresh(&opts).unwrap();
    assert_eq!(r.action, Action::NothingToMerge);
    assert_eq!(r.unmerged, ["/usr"]);
    assert!(
        mounts_below(host.path()).is_empty(),
        "{:?}",
        mounts_below(host.path())
    );
    assert_eq!(
        fs::read_to_string(host.p("usr/share/common.txt")).unwrap(),
        "host\n"
    );
}
