//! The `sysext` binary: same JSON as systemd-sysext 252 for `status` and
//! `list` on the same tree, merge/refresh/unmerge exit codes and messages,
//! `verify IMAGE` on good and tampered images, and the shipped unit file
//! checked with `systemd-analyze verify`.

mod runtime_common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use runtime_common::*;

fn sysext() -> Command {
    Command::new(integration_tests::bin("merge-runtime", "sysext"))
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn by_key(v: &serde_json::Value, key: &str) -> BTreeMap<String, serde_json::Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| (r[key].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn cli_matches_systemd_sysext_json_and_verifies_images() {
    // Build the binary outside the namespace (cargo needs the real /run).
    let bin = integration_tests::bin("merge-runtime", "sysext");
    assert!(bin.exists());
    if !in_private_ns("cli_matches_systemd_sysext_json_and_verifies_images") {
        return;
    }
    let host = Host::new();
    let w = tempfile::tempdir().unwrap();
    let work = w.path();
    let fits = "ID=debian\nVERSION_ID=12\n";
    ext_tree(
        &host.p("etc/extensions/tools"),
        "tools",
        fits,
        &[("usr/bin/tool", "t\n")],
    );
    let key = openssl_key(work, "vendor");
    trust(&host, &key, "vendor");
    let fsimg = work.join("app.squashfs");
    squashfs_ext(
        work,
        &fsimg,
        "app",
        "ID=_any\nEXTENSION_RELOAD_MANAGER=1\n",
        &[("opt/app/app", "a\n")],
    );
    let app = ddi(
        &fsimg,
        &host.p("var/lib/extensions/app.raw"),
        Some(&key),
        work,
    );
    let root = format!("--root={}", host.path().display());

    // list: systemd's fields and values, plus ours.
    let ours = json(&run_ok(sysext().args([&root, "list", "--json=short"])));
    let theirs = json(&run_ok(Command::new("systemd-sysext").args([
        &root,
        "list",
        "--json=short",
    ])));
    let (o, t) = (by_key(&ours, "name"), by_key(&theirs, "name"));
    assert_eq!(o.keys().collect::<Vec<_>>(), t.keys().collect::<Vec<_>>());
    for (name, row) in &t {
        for k in ["type", "path", "time"] {
            assert_eq!(
                o[name][k], row[k],
                "list {name} {k}: ours {} theirs {row}",
                o[name]
            );
        }
    }
    assert_eq!(o["app"]["format"], "gpt");
    assert_eq!(o["app"]["signed"], true);

    // merge, then both tools' status agree.
    let out = sysext().args([&root, "merge"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("Using extensions 'app', 'tools'."), "{msg}");
    let ours = json(&run_ok(sysext().args([&root, "status", "--json"])));
    let theirs = systemd_status(host.path());
    let (o, t) = (by_key(&ours, "hierarchy"), by_key(&theirs, "hierarchy"));
    assert_eq!(o.keys().collect::<Vec<_>>(), ["/opt", "/usr"]);
    for (h, row) in &t {
        for k in ["extensions", "since"] {
            assert_eq!(o[h][k], row[k], "status {h} {k}");
        }
    }
    let images = o["/usr"]["images"].as_array().unwrap();
    let app_row = images.iter().find(|i| i["name"] == "app").unwrap();
    assert_eq!(app_row["verification"], "user-space");
    assert_eq!(app_row["root_hash"], app.root_hash);
    assert_eq!(app_row["reload_manager"], true);
    let human = run_ok(sysext().args([&root, "status"]));
    assert!(human.starts_with("HIERARCHY EXTENSIONS SINCE"), "{human}");
    assert!(human.contains("user-space"), "{human}");

    // merge again fails like systemd's; refresh with no change is a no-op.
    let again = sysext().args([&root, "merge"]).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already merged"));
    let r = json(&run_ok(sysext().args([&root, "refresh", "--json"])));
    assert_eq!(r["action"], "unchanged");
    assert_eq!(r["reloaded_manager"], false, "never under --root");

    // verify IMAGE: good, then one flipped byte.
    let v = json(&run_ok(
        sysext().args([&root, "verify", "--json"]).arg(&app.path),
    ));
    assert_eq!(v["root_hash"], app.root_hash);
    assert!(v["signer"].as_str().unwrap().contains("vendor"), "{v}");
    let bad = work.join("bad.raw");
    fs::copy(&app.path, &bad).unwrap();
    let at = app.data.0 + 100;
    let b = read_at(&bad, at, 1)[0];
    write_at(&bad, at, &[!b]);
    let out = sysext().args([&root, "verify"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match its root hash") && err.contains("does not match"),
        "{err}"
    );

    // unmerge; the other tool agrees nothing is merged.
    run_ok(sysext().args([&root, "unmerge"]));
    let theirs = systemd_status(host.path());
    assert!(
        theirs
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["extensions"] == "none"),
        "{theirs}"
    );
    assert!(mounts_below(host.path()).is_empty());
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze", "systemd");
    let bin = integration_tests::bin("merge-runtime", "sysext");
    let unit = integration_tests::workspace_root().join("merge-runtime/units/sysext-merge.service");
    let text = fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("ExecStart=/usr/bin/sysext refresh")
            && text.contains("ExecStop=/usr/bin/sysext unmerge")
    );
    // Point it at the built binary (systemd-analyze checks that it exists).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sysext-merge.service");
    fs::write(
        &copy,
        text.replace("/usr/bin/sysext", &bin.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("sysext-merge.service:"),
        "{err}"
    );
}
