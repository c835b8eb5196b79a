//! Safe unpacking and the ELF architecture lint, on archives generated
//! here (tar crate for hostile headers the crate's safe setters refuse to
//! write, GNU tar as the oracle for what a correct extraction looks like).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bakery::elf::{self, ArchProblem};
use bakery::unpack::{
    unpack, ArchiveFormat, Limits, PlacedKind, Selection, UnpackErrorKind, UnpackOptions,
};
use integration_tests::{require_tool, run_ok};
use sysupdate::Arch;
use tar::EntryType;

/// The arm64 binary used as a look-alike: the dynamic loader from Debian's
/// `libc6-arm64-cross` (Architecture: all), a real aarch64 executable.
const ARM64_BINARY: &str = "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1";
/// A real x86-64 executable.
const X86_64_BINARY: &str = "/bin/true";

/// Appends an entry with raw header fields, bypassing the tar crate's path
/// checks (which would refuse `..` and absolute names).
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: EntryType,
    data: &[u8],
    link: Option<&[u8]>,
    mode: u32,
) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l);
        }
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8], mode: u32) {
    raw_entry(b, name.as_bytes(), EntryType::Regular, data, None, mode);
}

fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str) {
    raw_entry(b, name.as_bytes(), EntryType::Directory, b"", None, 0o755);
}

fn symlink(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    raw_entry(
        b,
        name.as_bytes(),
        EntryType::Symlink,
        b"",
        Some(target.as_bytes()),
        0o777,
    );
}

fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn compress(tar: &[u8], format: ArchiveFormat) -> Vec<u8> {
    use std::io::Write;
    match format {
        ArchiveFormat::TarGz => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        ArchiveFormat::TarXz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        ArchiveFormat::TarZst => zstd::encode_all(tar, 3).unwrap(),
        ArchiveFormat::Tar | ArchiveFormat::Raw => tar.to_vec(),
    }
}

/// A scratch area: `input` files and a `stage` root, inside a parent whose
/// other contents must never change (escapes would land there).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("stage")).unwrap();
        fs::write(dir.path().join("sentinel"), b"untouched").unwrap();
        Scratch { dir }
    }

    fn stage(&self) -> PathBuf {
        self.dir.path().join("stage")
    }

    fn input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    /// Nothing appeared next to the staging root, and the sentinel is intact.
    fn assert_nothing_escaped(&self, inputs: &[&str]) {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = ["sentinel", "stage"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        want.extend(inputs.iter().map(|s| s.to_string()));
        want.sort();
        assert_eq!(names, want);
        assert_eq!(
            fs::read(self.dir.path().join("sentinel")).unwrap(),
            b"untouched"
        );
    }
}

/// Unpacks `tar` (compressed as `format`) with `selection`; returns the result.
fn try_unpack(
    s: &Scratch,
    tar: &[u8],
    format: ArchiveFormat,
    opts: UnpackOptions,
) -> Result<bakery::unpack::UnpackReport, bakery::unpack::UnpackError> {
    let input = s.input("input", &compress(tar, format));
    unpack(&input, format, &s.stage(), &opts)
}

fn opts(name: &str) -> UnpackOptions {
    UnpackOptions::new(name, Selection::all())
}

/// A map of relative path -> description (type, mode class, content or target).
fn describe_tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = fs::symlink_metadata(e.path()).unwrap();
            let desc = if m.file_type().is_symlink() {
                format!("symlink -> {}", fs::read_link(e.path()).unwrap().display())
            } else if m.is_dir() {
                stack.push(r.clone());
                "dir".to_string()
            } else {
                let exec = m.permissions().mode() & 0o111 != 0;
                format!(
                    "file exec={exec} links={} {:?}",
                    m.nlink(),
                    fs::read(e.path()).unwrap()
                )
            };
            out.push((r.display().to_string(), desc));
        }
    }
    out.sort();
    out
}

fn good_archive() -> Vec<u8> {
    tar_bytes(|b| {
        dir(b, "./");
        dir(b, "./bin/");
        file(b, "./bin/k3s", b"\x7fELF fake k3s", 0o755);
        symlink(b, "./bin/kubectl", "k3s");
        symlink(b, "./bin/crictl", "../bin/./k3s");
        raw_entry(
            b,
            b"./bin/ctr",
            EntryType::Link,
            b"",
            Some(b"./bin/k3s"),
            0o755,
        );
        dir(b, "./share/doc/");
        file(b, "./share/doc/README", b"hello\n", 0o600);
        file(b, "./etc/config.toml", b"x = 1\n", 0o644);
    })
}

#[test]
fn unpacks_every_compression_like_gnu_tar() {
    require_tool("tar", "tar");
    for format in [
        ArchiveFormat::TarGz,
        ArchiveFormat::TarXz,
        ArchiveFormat::TarZst,
        ArchiveFormat::Tar,
    ] {
        let s = Scratch::new();
        let report = try_unpack(&s, &good_archive(), format, opts("k3s.tar"))
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert!(report
            .placed
            .contains(&(PathBuf::from("bin/ctr"), PlacedKind::HardLink)));
        // The oracle: GNU tar extracting the same (uncompressed) archive.
        let oracle = tempfile::tempdir().unwrap();
        let plain = s.input("plain.tar", &good_archive());
        run_ok(
            Command::new("tar")
                .arg("-xf")
                .arg(&plain)
                .arg("-C")
                .arg(oracle.path())
                .arg("--no-same-owner"),
        );
        assert_eq!(
            describe_tree(&s.stage()),
            describe_tree(oracle.path()),
            "{format}"
        );
        // Modes are normalised: executables 0755, the rest 0644.
        let mode = |p: &str| {
            fs::metadata(s.stage().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin/k3s"), 0o755);
        assert_eq!(mode("share/doc/README"), 0o644);
        s.assert_nothing_escaped(&["input", "plain.tar"]);
    }
}

#[test]
fn selection_strips_places_renames_and_excludes() {
    let tar = tar_bytes(|b| {
        dir(b, "rke2-v1.30.4/");
        file(b, "rke2-v1.30.4/bin/rke2", b"rke2", 0o755);
        file(b, "rke2-v1.30.4/bin/rke2-killall.sh", b"#!/bin/sh\n", 0o755);
        file(
            b,
            "rke2-v1.30.4/bin/rke2-uninstall.sh",
            b"#!/bin/sh\n",
            0o755,
        );
        file(
            b,
            "rke2-v1.30.4/lib/systemd/system/rke2-server.service",
            b"[Unit]\n",
            0o644,
        );
        file(b, "rke2-v1.30.4/share/rke2/LICENSE", b"license", 0o644);
        file(b, "rke2-v1.30.4/README.md", b"unselected", 0o644);
    });
    let sel = Selection::all()
        .strip_components(1)
        .place("bin", "/usr/local/bin/")
        .unwrap()
        .place(
            "lib/systemd/system/rke2-server.service",
            "usr/lib/systemd/system/",
        )
        .unwrap()
        .place_with_mode("share/rke2/LICENSE", "usr/share/rke2/COPYING", 0o444)
        .unwrap()
        .exclude("bin/rke2-uninstall.sh")
        .unwrap();
    let s = Scratch::new();
    let report = try_unpack(
        &s,
        &tar,
        ArchiveFormat::TarGz,
        UnpackOptions::new("rke2.linux-amd64.tar.gz", sel),
    )
    .unwrap();
    let tree: Vec<String> = describe_tree(&s.stage())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        tree,
        [
            "usr",
            "usr/lib",
            "usr/lib/systemd",
            "usr/lib/systemd/system",
            "usr/lib/systemd/system/rke2-server.service",
            "usr/local",
            "usr/local/bin",
            "usr/local/bin/rke2",
            "usr/local/bin/rke2-killall.sh",
            "usr/share",
            "usr/share/rke2",
            "usr/share/rke2/COPYING",
        ]
    );
    let mode = fs::metadata(s.stage().join("usr/share/rke2/COPYING"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o444);
    assert_eq!(
        report.skipped, 3,
        "top dir, README.md and the uninstall script"
    );

    // A rule that matches nothing is an error: the layout changed upstream.
    let s = Scratch::new();
    let sel = Selection::all()
        .strip_components(1)
        .place("bin/rke2-server", "usr/bin/")
        .unwrap();
    let e = try_unpack(
        &s,
        &tar,
        ArchiveFormat::TarGz,
        UnpackOptions::new("rke2.linux-amd64.tar.gz", sel),
    )
    .unwrap_err();
    assert!(
        matches!(e.kind, UnpackErrorKind::RuleUnmatched { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("rke2.linux-amd64.tar.gz")
            && e.to_string().contains("bin/rke2-server"),
        "{e}"
    );
}

/// Asserts that unpacking fails with `kind`, that the message names the
/// archive and `entry`, and that nothing escaped the staging root.
fn assert_refused(
    tar: &[u8],
    entry: &str,
    check: impl Fn(&UnpackErrorKind) -> bool,
    want_in_message: &str,
) {
    let s = Scratch::new();
    let e = try_unpack(&s, tar, ArchiveFormat::TarGz, opts("hostile.tar.gz"))
        .expect_err("must be refused");
    let msg = e.to_string();
    assert!(check(&e.kind), "unexpected error kind: {msg}");
    assert!(msg.starts_with("hostile.tar.gz: entry "), "{msg}");
    assert!(
        msg.contains(&format!("{entry:?}")),
        "names the entry {entry:?}: {msg}"
    );
    assert!(msg.contains(want_in_message), "{msg}");
    s.assert_nothing_escaped(&["input"]);
}

#[test]
fn refuses_path_traversal_and_absolute_paths() {
    for name in ["../evil", "a/../../evil", "./../sentinel"] {
        let tar = tar_bytes(|b| file(b, name, b"pwned", 0o644));
        assert_refused(&tar, name, |k| matches!(k, UnpackErrorKind::DotDot), "'..'");
    }
    let tar = tar_bytes(|b| file(b, "/etc/evil", b"pwned", 0o644));
    assert_refused(
        &tar,
        "/etc/evil",
        |k| matches!(k, UnpackErrorKind::AbsolutePath),
        "absolute path",
    );
}

#[test]
fn refuses_escaping_symlinks_and_writes_through_symlinks() {
    let tar = tar_bytes(|b| symlink(b, "usr/lib/libc.so", "/etc/shadow"));
    assert_refused(
        &tar,
        "usr/lib/libc.so",
        |k| matches!(k, UnpackErrorKind::AbsoluteSymlink { .. }),
        "/etc/shadow",
    );

    let tar = tar_bytes(|b| symlink(b, "usr/lib/x", "../../../sentinel"));
    assert_refused(
        &tar,
        "usr/lib/x",
        |k| matches!(k, UnpackErrorKind::SymlinkEscapes { .. }),
        "climbs out",
    );

    // A link that stays inside is fine on its own, but nothing may be
    // written through it.
    let tar = tar_bytes(|b| {
        dir(b, "real/");
        symlink(b, "alias", "real");
        file(b, "alias/file", b"x", 0o644);
    });
    assert_refused(
        &tar,
        "alias/file",
        |k| matches!(k, UnpackErrorKind::ThroughSymlink { .. }),
        "through the symlink",
    );

    // The classic two-step: a symlink to the parent, then a write via it.
    let tar = tar_bytes(|b| {
        symlink(b, "up", "..");
        file(b, "up/sentinel", b"pwned", 0o644);
    });
    assert_refused(
        &tar,
        "up",
        |k| matches!(k, UnpackErrorKind::SymlinkEscapes { .. }),
        "climbs out",
    );

    // Absolute targets are allowed only when asked for.
    let tar = tar_bytes(|b| symlink(b, "usr/local/nvidia", "/opt/nvidia"));
    let s = Scratch::new();
    let mut o = opts("nvidia.tar.gz");
    o.allow_absolute_symlinks = true;
    try_unpack(&s, &tar, ArchiveFormat::TarGz, o).unwrap();
    assert_eq!(
        fs::read_link(s.stage().join("usr/local/nvidia")).unwrap(),
        Path::new("/opt/nvidia")
    );
}

#[test]
fn refuses_device_nodes_fifos_and_outside_hard_links() {
    for (kind, what) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "FIFO"),
    ] {
        let tar = tar_bytes(|b| raw_entry(b, b"dev/sda", kind, b"", None, 0o600));
        assert_refused(
            &tar,
            "dev/sda",
            |k| matches!(k, UnpackErrorKind::SpecialFile(_)),
            what,
        );
    }
    for target in ["/etc/passwd", "../sentinel", "not-in-archive"] {
        let tar = tar_bytes(|b| {
            raw_entry(
                b,
                b"bin/passwd",
                EntryType::Link,
                b"",
                Some(target.as_bytes()),
                0o644,
            )
        });
        assert_refused(
            &tar,
            "bin/passwd",
            |k| matches!(k, UnpackErrorKind::HardLinkOutside { .. }),
            target,
        );
    }
}

#[test]
fn refuses_absurd_sizes_and_compression_bombs() {
    // Per-file limit, from the header before reading.
    let tar = tar_bytes(|b| file(b, "big", &vec![1u8; 300_000], 0o644));
    let s = Scratch::new();
    let mut o = opts("big.tar.gz");
    o.limits = Limits {
        max_file_size: 100_000,
        ..Limits::default()
    };
    let e = try_unpack(&s, &tar, ArchiveFormat::TarGz, o).unwrap_err();
    assert!(
        matches!(
            e.kind,
            UnpackErrorKind::FileTooLarge {
                size: 300_000,
                limit: 100_000
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("\"big\""), "{e}");

    // Total limit across files.
    let tar = tar_bytes(|b| {
        for i in 0..5 {
            file(b, &format!("f{i}"), &vec![2u8; 40_000], 0o644);
        }
    });
    let s = Scratch::new();
    let mut o = opts("many.tar.zst");
    o.limits = Limits {
        max_total_size: 100_000,
        ..Limits::default()
    };
    let e = try_unpack(&s, &tar, ArchiveFormat::TarZst, o).unwrap_err();
    assert!(
        matches!(e.kind, UnpackErrorKind::TotalTooLarge { limit: 100_000 }),
        "{e}"
    );

    // A bomb: 64 MiB of zeros compress to a few dozen KiB; the decompressed
    // stream limit stops it even though no single limit on placed files would.
    let tar = tar_bytes(|b| file(b, "zeros", &vec![0u8; 64 << 20], 0o644));
    let packed = compress(&tar, ArchiveFormat::TarXz);
    assert!(
        packed.len() < 1 << 20,
        "the bomb is small: {} bytes",
        packed.len()
    );
    let s = Scratch::new();
    let input = s.input("input", &packed);
    let mut o = opts("bomb.tar.xz");
    o.limits = Limits {
        max_decompressed: 8 << 20,
        ..Limits::default()
    };
    let e = unpack(&input, ArchiveFormat::TarXz, &s.stage(), &o).unwrap_err();
    assert!(
        matches!(e.kind, UnpackErrorKind::DecompressedTooLarge { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("bomb.tar.xz"), "{e}");

    // Entry count.
    let tar = tar_bytes(|b| {
        for i in 0..20 {
            file(b, &format!("f{i}"), b"", 0o644);
        }
    });
    let s = Scratch::new();
    let mut o = opts("count.tar.gz");
    o.limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let e = try_unpack(&s, &tar, ArchiveFormat::TarGz, o).unwrap_err();
    assert!(
        matches!(e.kind, UnpackErrorKind::TooManyEntries { limit: 10 }),
        "{e}"
    );
}

#[test]
fn refuses_bytes_of_the_wrong_format_and_duplicates() {
    let s = Scratch::new();
    let input = s.input("input", &compress(&good_archive(), ArchiveFormat::TarXz));
    let e = unpack(
        &input,
        ArchiveFormat::TarGz,
        &s.stage(),
        &opts("wasmtime.tar.gz"),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("wasmtime.tar.gz") && msg.contains("tar.gz") && msg.contains("xz"),
        "{msg}"
    );

    let s = Scratch::new();
    let input = s.input("input", b"<html><body>404 Not Found</body></html>");
    let e = unpack(
        &input,
        ArchiveFormat::TarZst,
        &s.stage(),
        &opts("x.tar.zst"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("HTML"), "{e}");

    // The same path from two inputs (or twice in one archive).
    let s = Scratch::new();
    let bin = s.input("kubectl", b"binary");
    let sel = || Selection::all().place("", "usr/bin/kubectl").unwrap();
    unpack(
        &bin,
        ArchiveFormat::Raw,
        &s.stage(),
        &UnpackOptions::new("kubectl", sel()),
    )
    .unwrap();
    let e = unpack(
        &bin,
        ArchiveFormat::Raw,
        &s.stage(),
        &UnpackOptions::new("kubectl", sel()),
    )
    .unwrap_err();
    assert!(matches!(e.kind, UnpackErrorKind::Exists { .. }), "{e}");
}

#[test]
fn raw_inputs_are_placed_with_their_mode() {
    let s = Scratch::new();
    let bin = s.input("blob", b"\x7fELF...");
    let r = unpack(
        &bin,
        ArchiveFormat::Raw,
        &s.stage(),
        &UnpackOptions::new(
            "https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubeadm",
            Selection::all().place("", "usr/bin/").unwrap(),
        ),
    )
    .unwrap();
    assert_eq!(
        r.placed,
        [(PathBuf::from("usr/bin/kubeadm"), PlacedKind::File)]
    );
    let m = fs::metadata(s.stage().join("usr/bin/kubeadm")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read(s.stage().join("usr/bin/kubeadm")).unwrap(),
        b"\x7fELF..."
    );

    let e = unpack(
        &bin,
        ArchiveFormat::Raw,
        &s.stage(),
        &UnpackOptions::new("x", Selection::all()),
    )
    .unwrap_err();
    assert!(matches!(e.kind, UnpackErrorKind::RawNeedsOneRule), "{e}");
}

/// `readelf -h` as the oracle for the header fields we read.
fn readelf_machine(path: &Path) -> String {
    let out = run_ok(Command::new("readelf").arg("-h").arg(path));
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Machine:"))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| panic!("readelf printed no Machine line:\n{out}"))
}

fn require_arm64_binary() {
    assert!(
        Path::new(ARM64_BINARY).is_file(),
        "{ARM64_BINARY} is missing: install the Debian package libc6-arm64-cross (./scripts/test.sh does)"
    );
}

#[test]
fn elf_headers_agree_with_readelf() {
    require_tool("readelf", "binutils");
    require_arm64_binary();
    let x = elf::read_header(Path::new(X86_64_BINARY))
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(x.arch(), Some(Arch::X86_64));
    assert!(readelf_machine(Path::new(X86_64_BINARY)).contains("X86-64"));
    let a = elf::read_header(Path::new(ARM64_BINARY))
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(a.arch(), Some(Arch::Arm64));
    assert_eq!(readelf_machine(Path::new(ARM64_BINARY)), "AArch64");
    assert_eq!(
        elf::read_header(Path::new("/etc/os-release")).unwrap(),
        None
    );
}

#[test]
fn elf_lint_catches_a_wrong_architecture_binary_in_an_unpacked_archive() {
    require_arm64_binary();
    let x86 = fs::read(X86_64_BINARY).unwrap();
    let arm = fs::read(ARM64_BINARY).unwrap();
    // A look-alike kubernetes bundle where one binary is the arm64 build.
    let tar = tar_bytes(|b| {
        file(b, "kubernetes/node/bin/kubelet", &x86, 0o755);
        file(b, "kubernetes/node/bin/kubectl", &arm, 0o755);
        file(b, "kubernetes/node/bin/README", b"not a binary", 0o644);
        file(b, "kubernetes/node/bin/kubeadm.sh", b"#!/bin/sh\n", 0o755);
    });
    let s = Scratch::new();
    let sel = Selection::all()
        .strip_components(3)
        .place("", "usr/bin/")
        .unwrap();
    try_unpack(
        &s,
        &tar,
        ArchiveFormat::TarGz,
        UnpackOptions::new("kubernetes-node.tar.gz", sel),
    )
    .unwrap();

    let findings = elf::lint_dir(&s.stage(), Arch::X86_64).unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].path, Path::new("usr/bin/kubectl"));
    assert!(matches!(findings[0].problem, ArchProblem::WrongArch(h) if h.machine == 183));
    let msg = findings[0].to_string();
    assert!(
        msg.contains("usr/bin/kubectl") && msg.contains("AArch64") && msg.contains("x86-64"),
        "{msg}"
    );

    let findings = elf::lint_dir(&s.stage(), Arch::Arm64).unwrap();
    let paths: Vec<&Path> = findings.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(paths, [Path::new("usr/bin/kubelet")]);
}
