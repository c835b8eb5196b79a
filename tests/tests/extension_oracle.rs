//! `sysupdate::extension` checked against systemd itself:
//!
//! - the os-release parser against `systemd-dissect --json`, which prints
//!   the pairs systemd's own parser reads from an image's
//!   extension-release (fixed tricky cases, random texts, and what our
//!   renderer writes for random values);
//! - `check_compatible` against `systemd-sysext merge --root` over a
//!   matrix of host os-releases and extension-releases: exactly the
//!   images we call compatible must be the ones systemd merges.

use std::fs;
use std::path::Path;
use std::process::Command;

use integration_tests::{
    in_private_mount_ns, require_root, require_tool, run_ok, shell_quote, SysextRoot,
};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use sysupdate::extension::{check_compatible, Host, OsRelease, Scope};
use sysupdate::Arch;

/// systemd's major version, from `systemd-dissect --version`.
fn systemd_version() -> u32 {
    let out = run_ok(Command::new("systemd-dissect").arg("--version"));
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the systemd version from {out:?}"))
}

/// Builds a squashfs image `DIR/NAME.raw` holding only
/// `usr/lib/extension-release.d/extension-release.NAME` = `release`, and
/// returns the pairs `systemd-dissect` reads from it (`None` when it reads
/// none: no assignment, or a file it refuses).
fn dissect_release(dir: &Path, name: &str, release: &[u8]) -> Option<Vec<String>> {
    let tree = dir.join(format!("{name}.d"));
    let rel = tree.join("usr/lib/extension-release.d");
    fs::create_dir_all(&rel).unwrap();
    fs::write(rel.join(format!("extension-release.{name}")), release).unwrap();
    let image = dir.join(format!("{name}.raw"));
    run_ok(Command::new("mksquashfs").arg(&tree).arg(&image).args([
        "-quiet",
        "-noappend",
        "-no-progress",
    ]));
    let out = run_ok(
        Command::new("systemd-dissect")
            .arg("--json=short")
            .arg(&image),
    );
    fs::remove_dir_all(&tree).unwrap();
    fs::remove_file(&image).unwrap();
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("systemd-dissect printed no JSON ({e}): {out}"));
    json.get("extensionRelease").map(|v| {
        v.as_array()
            .unwrap_or_else(|| panic!("extensionRelease is not a list: {v}"))
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    })
}

/// What our lenient parser reads, in `systemd-dissect`'s terms.
fn ours(release: &[u8]) -> Option<Vec<String>> {
    let parsed = OsRelease::parse_bytes_lenient(release).ok()?;
    let pairs: Vec<String> = parsed
        .release
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    (!pairs.is_empty()).then_some(pairs)
}

/// True when a line of `text` is a comment holding a backslash, which
/// systemd 252 treats differently from ≥ 254 (and from us): there an
/// escaped newline continues the comment.
fn has_backslash_comment(text: &str) -> bool {
    text.split(['\n', '\r']).any(|l| {
        let l = l.trim_start_matches([' ', '\t']);
        (l.starts_with('#') || l.starts_with(';')) && l.contains('\\')
    })
}

const FIXED: &[&[u8]] = &[
    b"ID=_any\nA=\"x\\\"y\\n\"\nB=one\\\ntwo\nC=\"q\" 'r'\n 1BAD=y\nE = spaced  \nF=\\ lead\n",
    b"ID=debian\nVERSION_ID=\"12\"\n; other\nNAME='Debian GNU/Linux'\nX=a b  \n",
    b"ID=a\nVERSION_ID=\nID=b\n",
    b"A=\x0b x \x0c\nB=\xc2\xa0z\xc2\xa0\nC=x \"y\"\nD=x\\ \n",
    b"ID=_any\nA=\"unterminated\nB=c",
    b"ID=_any\nA=x\\\r\nB=1\r\nC=\"a\\\nb\"\nD='a\\b'\nE=\"\\a\\$\\`\\\\\"",
    b"noequals\nID=_any\n=lead=x\nK\"Q=v\n",
    b"ID=_any\nA=a\0b\n",
    b"ID=_any\nA=\xff\n",
    b"# \xff comment\nID=_any\n",
    b"",
    b"# only a comment\n\n",
    b"A=\n",
    b"A='x'\"y\"z  w  \n",
];

#[test]
fn parser_reads_what_systemd_reads() {
    require_root();
    require_tool("systemd-dissect", "systemd-container");
    require_tool("mksquashfs", "squashfs-tools");
    let v = systemd_version();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut check = |text: &[u8], what: &str| {
        if v < 254 && has_backslash_comment(&String::from_utf8_lossy(text)) {
            return;
        }
        let theirs = dissect_release(dir.path(), "t", text);
        assert_eq!(
            ours(text),
            theirs,
            "{what}: {:?}",
            String::from_utf8_lossy(text)
        );
        checked += 1;
    };
    for (i, text) in FIXED.iter().enumerate() {
        check(text, &format!("fixed case {i}"));
    }
    // Random texts over the characters the grammar cares about.
    let mut runner = TestRunner::deterministic();
    let texts = "[A-Za-z_0-9=\"' \t\\\\#;$`\n\r.ü\u{a0}\u{b}-]{0,80}";
    for i in 0..60 {
        let text = texts.new_tree(&mut runner).unwrap().current();
        check(text.as_bytes(), &format!("random text {i}"));
    }
    assert!(checked >= 60, "only {checked} cases were comparable");
}

#[test]
fn systemd_reads_back_what_we_render() {
    require_root();
    require_tool("systemd-dissect", "systemd-container");
    require_tool("mksquashfs", "squashfs-tools");
    let dir = tempfile::tempdir().unwrap();
    let mut runner = TestRunner::deterministic();
    let fields = proptest::collection::btree_map(
        "[A-Z_][A-Z0-9_]{0,8}",
        "[a-z \t\"'\\\\$`#;=\n\r.ü\u{a0}{}-]{0,16}",
        1..6,
    );
    for i in 0..30 {
        let fields = fields.new_tree(&mut runner).unwrap().current();
        let mut r = OsRelease::default();
        for (k, v) in &fields {
            r.set(k, v.clone()).unwrap();
        }
        let text = r.render();
        let theirs = dissect_release(dir.path(), "t", text.as_bytes());
        let want: Vec<String> = r.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(theirs, Some(want), "case {i}: {text:?}");
    }
}

/// Host os-releases × extension-releases, each extension in its own image
/// with a marker file: the markers systemd-sysext merges are the
/// extensions it found compatible.
#[test]
fn compatibility_matches_systemd_sysext() {
    require_root();
    require_tool("systemd-sysext", "systemd");
    require_tool("mksquashfs", "squashfs-tools");
    let native = Arch::native().expect("a systemd architecture");
    let other = if native == Arch::X86_64 {
        Arch::Arm64
    } else {
        Arch::X86_64
    };
    let (native, other) = (native.as_str(), other.as_str());
    let hosts = [
        "ID=debian\nVERSION_ID=12\n",
        "ID=flatcar\nVERSION_ID=3815.2.0\nSYSEXT_LEVEL=1.0\n",
        "ID=arch\n",
        "ID=flatcar\nSYSEXT_LEVEL=1.0\nVERSION_ID=\n",
        "ID=\"debian\"\nVERSION_ID='12'\n",
    ];
    let exts: Vec<String> = [
        "ID=_any\n",
        "ID=_any\nARCHITECTURE=NATIVE\n",
        "ID=_any\nARCHITECTURE=OTHER\n",
        "ID=_any\nARCHITECTURE=_any\n",
        "ID=_any\nARCHITECTURE=\n",
        "ID=_any\nSYSEXT_SCOPE=initrd\n",
        "ID=_any\nSYSEXT_SCOPE=initrd portable\n",
        "ID=_any\nSYSEXT_SCOPE=\"initrd\tsystem\"\n",
        "ID=_any\nSYSEXT_SCOPE=\n",
        "ID=_any\nSYSEXT_SCOPE=System\n",
        "VERSION_ID=12\n",
        "ID=\nVERSION_ID=12\n",
        "",
        "# nothing but a comment\n",
        "ID=debian\n",
        "ID=debian\nVERSION_ID=12\n",
        "ID=debian\nVERSION_ID=11\n",
        "ID=debian\nVERSION_ID=\n",
        "ID=debian\nVERSION_ID=12\nARCHITECTURE=OTHER\n",
        "ID=Debian\nVERSION_ID=12\n",
        "ID=flatcar\n",
        "ID=flatcar\nSYSEXT_LEVEL=1.0\n",
        "ID=flatcar\nSYSEXT_LEVEL=2.0\n",
        "ID=flatcar\nSYSEXT_LEVEL=2.0\nVERSION_ID=3815.2.0\n",
        "ID=flatcar\nVERSION_ID=3815.2.0\n",
        "ID=flatcar\nVERSION_ID=9999\n",
        "ID=flatcar\nSYSEXT_LEVEL=\nVERSION_ID=3815.2.0\n",
        "ID=arch\nVERSION_ID=1\n",
        "ID=arch\nSYSEXT_LEVEL=x\n",
        "ID=\"debian\" # not a comment\nVERSION_ID=12\n",
        "ID=debian\\\n\nVERSION_ID=12\n",
    ]
    .iter()
    .map(|e| e.replace("NATIVE", native).replace("OTHER", other))
    .collect();

    let images = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let name = format!("e{i:02}");
        let tree = images.path().join(&name);
        let rel = tree.join("usr/lib/extension-release.d");
        fs::create_dir_all(&rel).unwrap();
        fs::create_dir_all(tree.join("usr/share/oracle")).unwrap();
        fs::write(rel.join(format!("extension-release.{name}")), ext).unwrap();
        fs::write(tree.join("usr/share/oracle").join(&name), "").unwrap();
        let image = images.path().join(format!("{name}.raw"));
        run_ok(Command::new("mksquashfs").arg(&tree).arg(&image).args([
            "-quiet",
            "-noappend",
            "-no-progress",
        ]));
        names.push((name, image, ext.clone()));
    }

    let mut compared = 0;
    for os_release in hosts {
        let host_release = OsRelease::parse(os_release).unwrap();
        let host = Host::from_os_release(&host_release, native, Scope::System).unwrap();
        let mut want = Vec::new();
        for (name, _, ext) in &names {
            let ext = OsRelease::parse_lenient(ext).unwrap().release;
            if check_compatible(&ext, &host).is_ok() {
                want.push(name.clone());
            }
        }

        let root = SysextRoot::new(os_release);
        for (name, image, _) in &names {
            root.add_image(name, image);
        }
        let r = shell_quote(root.path().as_os_str());
        let script = format!(
            "{}systemd-sysext merge --root={r} || true\necho '--- merged'\nls -A {r}/usr/share/oracle 2>/dev/null || true\n",
            root.shell_setup()
        );
        let out = in_private_mount_ns(&script);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let merged: Vec<String> = stdout
            .split_once("--- merged\n")
            .map(|(_, rest)| rest.lines().map(str::to_string).collect())
            .unwrap_or_default();
        assert_eq!(
            want, merged,
            "host {os_release:?}: ours (left) vs systemd-sysext (right)\n{stderr}"
        );
        compared += names.len();
    }
    assert_eq!(compared, hosts.len() * exts.len());
}
