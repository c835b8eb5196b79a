//! End-to-end tests of `bakery build`: the image is checked with
//! `unsquashfs`, merged by the real `systemd-sysext` in a private mount
//! namespace, rebuilt for reproducibility, and bad recipes are fed to the
//! CLI to check the error text and that nothing is left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bakery::build::{build, BuildOptions, BuildReport};
use bakery::squashfs::Compression;
use bakery::stage::SourceDateEpoch;
use integration_tests::{
    bakery_bin, example, in_private_mount_ns, list_dir, output, require_root, require_tool, run_ok,
    shell_quote, SysextRoot, HOST_MARKER,
};
use sysupdate::extension::{check_compatible, Host, Incompatible, OsRelease, Scope};
use sysupdate::Arch;

/// 2023-11-14 22:14:00 UTC: a whole minute, as `unsquashfs -lls` shows minutes.
const EPOCH: u32 = 1_700_000_040;
const EPOCH_TEXT: &str = "2023-11-14 22:14";

fn build_example(out: &Path, arches: &[Arch], epoch: u32) -> BuildReport {
    let mut opts = BuildOptions::new(out);
    opts.arches = arches.to_vec();
    opts.source_date_epoch = SourceDateEpoch::new(epoch);
    build(&example("hello"), &opts).unwrap_or_else(|e| panic!("build failed: {e}"))
}

fn unsquashfs_cat(image: &Path, path: &str) -> String {
    run_ok(Command::new("unsquashfs").arg("-cat").arg(image).arg(path))
}

fn sha256sum(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn example_image_has_normalised_contents() {
    require_tool("unsquashfs", "squashfs-tools");
    let out = tempfile::tempdir().unwrap();
    let report = build_example(out.path(), &[], EPOCH);

    // Every architecture of the recipe, named NAME-VERSION-ARCH.raw.
    let names: Vec<String> = report
        .images
        .iter()
        .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["hello-1.0.0-x86-64.raw", "hello-1.0.0-arm64.raw"]);
    assert_eq!(
        list_dir(out.path()),
        [
            "SHA256SUMS",
            "hello-1.0.0-arm64.raw",
            "hello-1.0.0-x86-64.raw"
        ],
        "no temporary files may remain"
    );
    // The reported size and digest are the file's, as sha256sum sees them,
    // and SHA256SUMS verifies with sha256sum -c.
    for i in &report.images {
        assert_eq!(fs::metadata(&i.path).unwrap().len(), i.size);
        assert_eq!(i.size % 4096, 0, "images are padded to 4 KiB");
        assert_eq!(sha256sum(&i.path), i.sha256.to_string());
    }
    run_ok(
        Command::new("sha256sum")
            .arg("--strict")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(out.path()),
    );

    let image = &report.images[0].path;
    let stat = run_ok(Command::new("unsquashfs").arg("-s").arg(image));
    assert!(stat.contains("Compression zstd"), "{stat}");
    let mkfs = run_ok(Command::new("unsquashfs").arg("-mkfs-time").arg(image));
    assert_eq!(mkfs.trim(), EPOCH.to_string());

    let listing = run_ok(Command::new("unsquashfs").args(["-lls", "-UTC"]).arg(image));
    let mut entries = Vec::new();
    for line in listing.lines().filter(|l| l.contains("squashfs-root")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // MODE OWNER SIZE DATE TIME PATH [-> TARGET]
        assert_eq!(f[1], "root/root", "owner of {line}");
        assert_eq!(format!("{} {}", f[3], f[4]), EPOCH_TEXT, "mtime of {line}");
        let path = f[5].strip_prefix("squashfs-root").unwrap().to_string();
        entries.push((path, f[0].to_string()));
    }
    let expected = [
        ("", "drwxr-xr-x"),
        ("/usr", "drwxr-xr-x"),
        ("/usr/bin", "drwxr-xr-x"),
        ("/usr/bin/hello", "-rwxr-xr-x"),
        ("/usr/lib", "drwxr-xr-x"),
        ("/usr/lib/extension-release.d", "drwxr-xr-x"),
        (
            "/usr/lib/extension-release.d/extension-release.hello",
            "-rw-r--r--",
        ),
        ("/usr/lib/systemd", "drwxr-xr-x"),
        ("/usr/lib/systemd/system", "drwxr-xr-x"),
        ("/usr/lib/systemd/system/hello.service", "-rw-r--r--"),
        ("/usr/lib/systemd/system/multi-user.target.d", "drwxr-xr-x"),
        (
            "/usr/lib/systemd/system/multi-user.target.d/10-hello.conf",
            "-rw-r--r--",
        ),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(entries, expected, "listing:\n{listing}");

    assert_eq!(
        unsquashfs_cat(image, "usr/lib/extension-release.d/extension-release.hello"),
        "ID=_any\nARCHITECTURE=x86-64\nSYSEXT_SCOPE=system\nEXTENSION_RELOAD_MANAGER=1\n\
         SYSEXT_ID=hello\nSYSEXT_VERSION_ID=1.0.0\nSYSEXT_PRETTY_NAME=\"hello 1.0.0\"\n"
    );
    let arm = unsquashfs_cat(
        &report.images[1].path,
        "usr/lib/extension-release.d/extension-release.hello",
    );
    assert!(arm.contains("\nARCHITECTURE=arm64\n"), "{arm}");
    let dropin = unsquashfs_cat(
        image,
        "usr/lib/systemd/system/multi-user.target.d/10-hello.conf",
    );
    assert!(
        dropin.ends_with("\n[Unit]\nUpholds=hello.service\n"),
        "{dropin}"
    );
    assert_eq!(
        unsquashfs_cat(image, "usr/bin/hello"),
        fs::read_to_string(example("hello").join("files/usr/bin/hello")).unwrap()
    );
}

/// Runs `systemd-sysext merge --root`, inspects the merged tree, unmerges
/// and inspects again; returns the script's stdout.
fn merge_unmerge(root: &SysextRoot, checks: &str) -> (String, String) {
    let r = shell_quote(root.path().as_os_str());
    let script = format!(
        "{setup}\
         systemd-sysext merge --root={r}\n\
         echo '--- merged'\n\
         {checks}\n\
         systemd-sysext unmerge --root={r}\n\
         echo '--- unmerged'\n\
         ls -A {r}/usr/bin\n\
         cat {r}/{HOST_MARKER}\n\
         echo '--- mounts'\n\
         findmnt -rn -o TARGET | grep -F {r} || true\n",
        setup = root.shell_setup(),
    );
    let out = in_private_mount_ns(&script);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

fn section<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("--- {name}\n"))
        .map(|i| i + name.len() + 5)
        .unwrap_or_else(|| panic!("no section {name} in:\n{text}"));
    let rest = &text[start..];
    &rest[..rest.find("\n--- ").map(|i| i + 1).unwrap_or(rest.len())]
}

#[test]
fn systemd_sysext_merges_and_unmerges_the_image() {
    require_root();
    require_tool("systemd-sysext", "systemd");
    require_tool("unsquashfs", "squashfs-tools");
    let native = Arch::native().expect("a systemd architecture");
    let out = tempfile::tempdir().unwrap();
    let report = build_example(out.path(), &[native], EPOCH);
    let image = &report.images[0].path;

    let os_release = "ID=debian\nVERSION_ID=12\n";
    // Our own check agrees with what systemd-sysext is about to do.
    let ext = OsRelease::parse(&unsquashfs_cat(
        image,
        "usr/lib/extension-release.d/extension-release.hello",
    ))
    .unwrap();
    let host_release = OsRelease::parse(os_release).unwrap();
    let host = Host::from_os_release(&host_release, native.as_str(), Scope::System).unwrap();
    check_compatible(&ext, &host).expect("the example fits any host");

    let root = SysextRoot::new(os_release);
    root.add_image("hello", image);
    let r = shell_quote(root.path().as_os_str());
    let checks = format!(
        "ls -A {r}/usr/bin\n\
         echo '--- run'\n\
         sh {r}/usr/bin/hello test\n\
         echo '--- dropin'\n\
         cat {r}/usr/lib/systemd/system/multi-user.target.d/10-hello.conf\n\
         echo '--- marker'\n\
         cat {r}/usr/.systemd-sysext/extensions\n\
         cat {r}/{HOST_MARKER}\n\
         echo '--- release'\n\
         cat {r}/usr/lib/extension-release.d/extension-release.hello"
    );
    let (stdout, stderr) = merge_unmerge(&root, &checks);

    let merged = section(&stdout, "merged");
    assert_eq!(
        merged.lines().collect::<Vec<_>>(),
        ["hello"],
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        section(&stdout, "run").trim(),
        "Hello from the hello extension, test!"
    );
    assert!(section(&stdout, "dropin").contains("Upholds=hello.service"));
    assert_eq!(
        section(&stdout, "marker"),
        "hello\nhost\n",
        "marker and host file"
    );
    assert!(section(&stdout, "release").contains("SYSEXT_VERSION_ID=1.0.0"));
    assert_eq!(
        section(&stdout, "unmerged"),
        "host\n",
        "hello is gone after unmerge: {stdout}"
    );
    assert_eq!(
        section(&stdout, "mounts").trim(),
        root.path().display().to_string(),
        "only our bind mount"
    );
    assert!(stderr.contains("Merged extensions into"), "{stderr}");
}

#[test]
fn image_for_another_os_is_refused_by_systemd_sysext_and_by_us() {
    require_root();
    require_tool("systemd-sysext", "systemd");
    require_tool("unsquashfs", "squashfs-tools");
    let native = Arch::native().expect("a systemd architecture");

    // The example recipe, but for ID=otheros.
    let recipe = tempfile::tempdir().unwrap();
    copy_tree(&example("hello"), recipe.path());
    let text = fs::read_to_string(recipe.path().join("recipe.toml")).unwrap();
    let text = text.replace("os = \"_any\"", "os = \"otheros\"\nversion-id = \"1\"");
    assert!(text.contains("otheros"));
    fs::write(recipe.path().join("recipe.toml"), text).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut opts = BuildOptions::new(out.path());
    opts.arches = vec![native];
    let report = build(recipe.path(), &opts).unwrap();
    let image = &report.images[0].path;

    let os_release = "ID=debian\nVERSION_ID=12\n";
    let ext_text = unsquashfs_cat(image, "usr/lib/extension-release.d/extension-release.hello");
    assert!(
        ext_text.starts_with("ID=otheros\nVERSION_ID=1\n"),
        "{ext_text}"
    );

    // Our check says why.
    let ext = OsRelease::parse(&ext_text).unwrap();
    let host_release = OsRelease::parse(os_release).unwrap();
    let host = Host::from_os_release(&host_release, native.as_str(), Scope::System).unwrap();
    let err = check_compatible(&ext, &host).unwrap_err();
    assert_eq!(
        err,
        Incompatible::Os {
            ext: "otheros".into(),
            host: "debian".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "the extension is for OS ID=otheros but the host's os-release says ID=debian"
    );

    // systemd-sysext refuses it: nothing is merged.
    let root = SysextRoot::new(os_release);
    root.add_image("hello", image);
    let r = shell_quote(root.path().as_os_str());
    let script = format!(
        "{}SYSTEMD_LOG_LEVEL=debug systemd-sysext merge --root={r}\necho '--- after'\nls -A {r}/usr/bin\n",
        root.shell_setup()
    );
    let out = in_private_mount_ns(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("No suitable extensions found (1 ignored due to incompatible version)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Extension 'hello' is for OS 'otheros', but deployed on top of 'debian'"),
        "{stderr}"
    );
    assert_eq!(section(&stdout, "after"), "", "nothing merged into usr/bin");

    // And an image for another architecture: both refuse too.
    let other = if native == Arch::X86_64 {
        Arch::Arm64
    } else {
        Arch::X86_64
    };
    let out2 = tempfile::tempdir().unwrap();
    let report = build_example(out2.path(), &[other], 0);
    let ext = OsRelease::parse(&unsquashfs_cat(
        &report.images[0].path,
        "usr/lib/extension-release.d/extension-release.hello",
    ))
    .unwrap();
    let err = check_compatible(&ext, &host).unwrap_err();
    assert!(matches!(err, Incompatible::Architecture { .. }), "{err}");
    let root = SysextRoot::new(os_release);
    root.add_image("hello", &report.images[0].path);
    let script = format!(
        "{}SYSTEMD_LOG_LEVEL=debug systemd-sysext merge --root={}\n",
        root.shell_setup(),
        shell_quote(root.path().as_os_str())
    );
    let out = in_private_mount_ns(&script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("is for architecture '{other}'")),
        "{stderr}"
    );
    assert!(stderr.contains("No suitable extensions found"), "{stderr}");
}

#[test]
fn rebuilds_are_byte_identical_and_follow_source_date_epoch() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let ra = build_example(a.path(), &[Arch::X86_64], EPOCH);
    let rb = build_example(b.path(), &[Arch::X86_64], EPOCH);
    let rc = build_example(c.path(), &[Arch::X86_64], EPOCH + 1);
    assert_eq!(ra.images[0].sha256, rb.images[0].sha256);
    assert_eq!(
        fs::read(&ra.images[0].path).unwrap(),
        fs::read(&rb.images[0].path).unwrap()
    );
    assert_ne!(ra.images[0].sha256, rc.images[0].sha256);

    // The same through the CLI and the environment variable; thread count
    // does not matter.
    let cli = |epoch: Option<&str>, threads: &str| -> String {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bakery_bin());
        cmd.args([
            "build",
            "--arch",
            "x86-64",
            "--threads",
            threads,
            "--output",
        ])
        .arg(out.path())
        .arg(example("hello"));
        match epoch {
            Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
            None => cmd.env_remove("SOURCE_DATE_EPOCH"),
        };
        run_ok(&mut cmd);
        sha256sum(&out.path().join("hello-1.0.0-x86-64.raw"))
    };
    let epoch = EPOCH.to_string();
    assert_eq!(cli(Some(&epoch), "1"), ra.images[0].sha256.to_string());
    assert_eq!(cli(Some(&epoch), "4"), ra.images[0].sha256.to_string());
    assert_ne!(cli(None, "0"), ra.images[0].sha256.to_string());
}

#[test]
fn every_compression_builds_an_image_unsquashfs_reads() {
    require_tool("unsquashfs", "squashfs-tools");
    for c in [
        Compression::Zstd,
        Compression::Gzip,
        Compression::Xz,
        Compression::Lz4,
    ] {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bakery_bin());
        cmd.args([
            "build",
            "--arch",
            "arm64",
            "--compression",
            c.as_str(),
            "-o",
        ])
        .arg(out.path())
        .arg(example("hello"));
        let stdout = run_ok(&mut cmd);
        assert!(
            stdout.contains(&format!("({c}, SOURCE_DATE_EPOCH=")),
            "{stdout}"
        );
        let image = out.path().join("hello-1.0.0-arm64.raw");
        let stat = run_ok(Command::new("unsquashfs").arg("-s").arg(&image));
        assert!(stat.contains(&format!("Compression {c}")), "{stat}");
        let hello = unsquashfs_cat(&image, "usr/bin/hello");
        assert!(hello.starts_with("#!/bin/sh\n"));
    }
}

#[test]
fn cli_prints_path_size_and_sha256_and_keeps_other_sums() {
    let out = tempfile::tempdir().unwrap();
    let other = format!("{}  other-1-x86-64.raw\n", "ab".repeat(32));
    fs::write(out.path().join("SHA256SUMS"), &other).unwrap();
    let stdout = run_ok(
        Command::new(bakery_bin())
            .arg("build")
            .arg(example("hello"))
            .arg("--output")
            .arg(out.path())
            .env_remove("SOURCE_DATE_EPOCH"),
    );
    let sums = fs::read_to_string(out.path().join("SHA256SUMS")).unwrap();
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines.len(), 3, "{sums}");
    assert!(lines[0].ends_with("  hello-1.0.0-arm64.raw"), "{sums}");
    assert!(lines[1].ends_with("  hello-1.0.0-x86-64.raw"), "{sums}");
    assert_eq!(
        lines[2],
        other.trim_end(),
        "other lines are kept, sorted by name"
    );
    for arch in ["x86-64", "arm64"] {
        let path = out.path().join(format!("hello-1.0.0-{arch}.raw"));
        let size = fs::metadata(&path).unwrap().len();
        let sha = sha256sum(&path);
        let line = stdout
            .lines()
            .find(|l| l.contains(&path.display().to_string()))
            .unwrap_or_else(|| panic!("no line for {arch}:\n{stdout}"));
        assert!(line.contains(&format!(" {size} bytes")), "{line}");
        assert!(line.contains(&format!("sha256 {sha}")), "{line}");
    }
    assert!(
        stdout.starts_with("built hello 1.0.0 (zstd, SOURCE_DATE_EPOCH=0)\n"),
        "{stdout}"
    );
}

#[test]
fn help_is_complete() {
    let top = run_ok(Command::new(bakery_bin()).arg("--help"));
    for want in [
        "Turn recipes into systemd-sysext images",
        "build",
        "Examples:",
        "bakery build examples/hello",
    ] {
        assert!(top.contains(want), "bakery --help lacks {want:?}:\n{top}");
    }
    let b = run_ok(Command::new(bakery_bin()).args(["build", "--help"]));
    for want in [
        "<RECIPE-DIR>",
        "--arch <ARCH>",
        "--output <DIR>",
        "--compression <NAME>",
        "zstd",
        "gzip",
        "xz",
        "lz4",
        "SHA256SUMS",
        "SOURCE_DATE_EPOCH",
        "Examples:",
    ] {
        assert!(b.contains(want), "bakery build --help lacks {want:?}:\n{b}");
    }
    let v = run_ok(Command::new(bakery_bin()).arg("--version"));
    assert!(v.starts_with("bakery "), "{v}");
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A copy of the example with `edit` applied; returns (recipe dir, out dir).
fn broken_example(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&example("hello"), &dir.path().join("r"));
    edit(&dir.path().join("r"));
    let out = dir.path().join("out");
    (dir, out)
}

fn edit_recipe(dir: &Path, f: impl FnOnce(String) -> String) {
    let p = dir.join("recipe.toml");
    let text = fs::read_to_string(&p).unwrap();
    let new = f(text.clone());
    assert_ne!(new, text, "the edit must change the recipe");
    fs::write(p, new).unwrap();
}

/// Line number (1-based) of the first line of the example's recipe
/// containing `needle`.
fn line_of(dir: &Path, needle: &str) -> usize {
    fs::read_to_string(dir.join("recipe.toml"))
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in recipe"))
        + 1
}

/// Runs `bakery build` on the broken recipe; asserts failure, `error: `
/// prefix, and that the output directory holds nothing. Returns stderr.
fn build_fails(recipe: &Path, out: &Path, extra: &[&str]) -> String {
    let res = output(
        Command::new(bakery_bin())
            .arg("build")
            .arg(recipe)
            .arg("--output")
            .arg(out)
            .args(extra)
            .env_remove("SOURCE_DATE_EPOCH"),
    );
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    assert_eq!(
        res.status.code(),
        Some(1),
        "expected exit 1; stderr:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(res.stdout.is_empty(), "nothing on stdout on failure");
    assert_eq!(
        list_dir(out),
        Vec::<String>::new(),
        "no output file may remain"
    );
    stderr
}

#[test]
fn unknown_key_is_named_with_file_and_line() {
    let (dir, out) = broken_example(|r| {
        edit_recipe(r, |t| {
            t.replace("reload-manager = true", "reload-manger = true")
        })
    });
    let r = dir.path().join("r");
    let line = line_of(&r, "reload-manger");
    let e = build_fails(&r, &out, &[]);
    let want = format!(
        "{}:{line}:1: key `reload-manger`:",
        r.join("recipe.toml").display()
    );
    assert!(e.contains(&want), "want {want:?} in:\n{e}");
    assert!(e.contains("unknown field"), "{e}");
    assert!(e.contains("reload-manager"), "lists the known keys: {e}");
}

#[test]
fn bad_arch_is_named_with_file_line_and_key() {
    let (dir, out) = broken_example(|r| {
        edit_recipe(r, |t| {
            t.replace("[\"x86-64\", \"arm64\"]", "[\"x86-64\", \"amd64\"]")
        })
    });
    let r = dir.path().join("r");
    let line = line_of(&r, "architectures =");
    let e = build_fails(&r, &out, &[]);
    let want = format!(
        "{}:{line}:28: key `architectures`:",
        r.join("recipe.toml").display()
    );
    assert!(e.contains(&want), "want {want:?} in:\n{e}");
    assert!(e.contains("unknown architecture \"amd64\""), "{e}");

    // A valid arch the recipe does not list, asked for with --arch.
    let (dir, out) =
        broken_example(|r| edit_recipe(r, |t| t.replace("[\"x86-64\", \"arm64\"]", "[\"arm64\"]")));
    let r = dir.path().join("r");
    let line = line_of(&r, "architectures =");
    let e = build_fails(&r, &out, &["--arch", "arm64", "--arch", "x86-64"]);
    assert!(
        e.contains(&format!("recipe.toml:{line}:17: architecture x86-64 is not in this recipe's `architectures` (arm64)")),
        "{e}"
    );
    // A name systemd does not know, on the command line.
    let res = output(Command::new(bakery_bin()).args(["build", "x", "--arch", "amd64"]));
    assert_eq!(res.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("unknown architecture \"amd64\""),
        "{stderr}"
    );
}

#[test]
fn file_outside_usr_and_opt_is_named() {
    let (dir, out) = broken_example(|r| {
        fs::create_dir_all(r.join("files/etc")).unwrap();
        fs::write(r.join("files/etc/hello.conf"), "x").unwrap();
    });
    let r = dir.path().join("r");
    let e = build_fails(&r, &out, &[]);
    let want = format!(
        "{}: only usr/ and opt/ may be shipped",
        r.join("files/etc").display()
    );
    assert!(e.contains(&want), "want {want:?} in:\n{e}");
}

#[test]
fn missing_name_is_named() {
    let (dir, out) = broken_example(|r| edit_recipe(r, |t| t.replace("name = \"hello\"\n", "")));
    let r = dir.path().join("r");
    let e = build_fails(&r, &out, &[]);
    let want = format!(
        "{}:1:1: key `name`: required key is missing; add `name = ",
        r.join("recipe.toml").display()
    );
    assert!(e.contains(&want), "want {want:?} in:\n{e}");
}

#[test]
fn other_bad_input_leaves_nothing_behind() {
    // A unit that the recipe does not ship.
    let (dir, out) = broken_example(|r| {
        fs::remove_file(r.join("files/usr/lib/systemd/system/hello.service")).unwrap()
    });
    let r = dir.path().join("r");
    let line = line_of(&r, "start =");
    let e = build_fails(&r, &out, &[]);
    assert!(
        e.contains(&format!(
            "recipe.toml:{line}:10: key `units.start`: unit hello.service is not shipped"
        )),
        "{e}"
    );

    // usr/sbin, an escaping symlink, a FIFO.
    let (dir, out) = broken_example(|r| {
        fs::create_dir_all(r.join("files/usr/sbin")).unwrap();
    });
    let e = build_fails(&dir.path().join("r"), &out, &[]);
    assert!(
        e.contains("files/usr/sbin: usr/sbin must not be shipped"),
        "{e}"
    );
    let (dir, out) = broken_example(|r| {
        std::os::unix::fs::symlink("../../../../etc/passwd", r.join("files/usr/bin/passwd"))
            .unwrap();
    });
    let e = build_fails(&dir.path().join("r"), &out, &[]);
    assert!(e.contains("files/usr/bin/passwd: is a symlink to \"../../../../etc/passwd\", which points outside the image root"), "{e}");
    let (dir, out) = broken_example(|r| {
        run_ok(Command::new("mkfifo").arg(r.join("files/usr/bin/fifo")));
    });
    let e = build_fails(&dir.path().join("r"), &out, &[]);
    assert!(e.contains("files/usr/bin/fifo: is a FIFO"), "{e}");

    // A bad SOURCE_DATE_EPOCH and a bad level.
    let (dir, out) = broken_example(|_| {});
    let res = output(
        Command::new(bakery_bin())
            .arg("build")
            .arg(dir.path().join("r"))
            .arg("-o")
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", "yesterday"),
    );
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.starts_with("error: invalid SOURCE_DATE_EPOCH=\"yesterday\""),
        "{stderr}"
    );
    assert!(!out.exists());
    let e = build_fails(&dir.path().join("r"), &out, &["--level", "30"]);
    assert!(e.contains("invalid zstd compression level 30"), "{e}");

    // A missing recipe directory.
    let e = build_fails(&dir.path().join("nope"), &out, &[]);
    assert!(e.contains("nope/recipe.toml"), "{e}");
}
