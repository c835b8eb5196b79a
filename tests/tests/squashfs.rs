//! Our squashfs writer (`bakery::squashfs`) against the real tools:
//! `unsquashfs` lists (`-lln`, `-pf`) and extracts (`-d`) what we wrote,
//! `unsquashfs -s` names the compressor, `mksquashfs` on the same tree gives
//! the same listing and data and a comparable size, and the kernel mounts the
//! image through a loop device in a private mount namespace.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use bakery::squashfs::{
    write_squashfs, Compression, SquashfsError, SquashfsOptions, SquashfsStats,
};
use bakery::tree::{DirNode, EntryName, FileContent, FileNode, Node, StagedTree, SymlinkNode};
use integration_tests::{in_private_mount_ns, require_root, require_tool, run_ok, shell_quote};

/// 2023-11-14 22:13:20 UTC (`date -u -d @1700000000`).
const MTIME: u32 = 1_700_000_000;
const MTIME_TEXT: &str = "2023-11-14 22:13";
const BLOCK: usize = 131_072;

/// Deterministic pseudo-random bytes (xorshift64*), for incompressible data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }

    /// Compressible, text-like bytes.
    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 12] = [
            "sysext ",
            "usr ",
            "lib ",
            "extension ",
            "overlay ",
            "verity ",
            "\n",
            "squashfs ",
            "0123 ",
            "image ",
            "root ",
            "hash ",
        ];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            v.extend_from_slice(WORDS[(self.next() % WORDS.len() as u64) as usize].as_bytes());
        }
        v.truncate(n);
        v
    }
}

fn write_file(path: &Path, content: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A source tree with everything the format has to get right.
fn make_source(root: &Path) {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let r = |p: &str| root.join(p);

    // Large files spanning many blocks: text, random (stored uncompressed),
    // a zero region (sparse blocks), an odd tail; and a duplicate of it.
    let mut big = rng.text(BLOCK * 8);
    big.extend(rng.bytes(BLOCK * 6));
    big.extend(vec![0u8; BLOCK * 3]);
    big.extend(rng.text(BLOCK * 4 + 12345));
    write_file(&r("usr/bin/big"), &big, 0o755);
    write_file(&r("usr/bin/big-copy"), &big, 0o755);
    write_file(&r("usr/bin/zeros"), &vec![0u8; BLOCK * 4], 0o644);

    // Block boundaries.
    for (name, len) in [
        ("block-exact", BLOCK),
        ("two-blocks", 2 * BLOCK),
        ("block-minus-1", BLOCK - 1),
        ("block-plus-1", BLOCK + 1),
    ] {
        write_file(&r(&format!("usr/lib/sizes/{name}")), &rng.text(len), 0o644);
    }
    write_file(&r("usr/lib/sizes/random-small"), &rng.bytes(5000), 0o644);
    write_file(&r("usr/lib/empty-1"), b"", 0o644);
    write_file(&r("usr/lib/empty-2"), b"", 0o600);

    // Many small files (fragments), some duplicates, more than 256 entries
    // in one directory.
    let first = rng.text(777);
    for i in 0..600 {
        let content = if i % 7 == 3 {
            first.clone()
        } else {
            rng.text((i * 37) % 3000 + 1)
        };
        write_file(&r(&format!("usr/share/many/f{i:04}")), &content, 0o644);
    }

    // Long names: a directory whose listing spans several metadata blocks
    // (extended directory inode with an index), mixing all entry types.
    let long = |i: usize| format!("{i:03}-{}", "n".repeat(200));
    for i in 0..300 {
        let p = r(&format!("usr/share/long/{}", long(i)));
        match i % 3 {
            0 => write_file(&p, &rng.text(i + 1), 0o644),
            1 => {
                fs::create_dir_all(&p).unwrap();
                write_file(&p.join("inner"), format!("inner {i}\n").as_bytes(), 0o644);
            }
            _ => {
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                symlink(format!("../many/f{:04}", i % 600), &p).unwrap();
            }
        }
    }
    write_file(
        &r(&format!("usr/share/{}", "x".repeat(255))),
        b"longest name\n",
        0o644,
    );

    // Deep directories.
    let mut deep = r("usr/share/deep");
    for _ in 0..60 {
        deep = deep.join("d");
    }
    write_file(&deep.join("leaf"), b"deep leaf\n", 0o644);

    // Modes and symlinks.
    write_file(&r("opt/app/bin/setuid"), b"#!/bin/sh\n", 0o4755);
    write_file(&r("opt/app/secret"), b"private\n", 0o600);
    fs::create_dir_all(r("opt/app/shared")).unwrap();
    fs::set_permissions(r("opt/app/shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir_all(r("opt/app/private")).unwrap();
    fs::set_permissions(r("opt/app/private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(r("opt/app/empty-dir")).unwrap();
    symlink("big", r("usr/bin/rel-link")).unwrap();
    symlink("/usr/bin/big", r("usr/bin/abs-link")).unwrap();
    symlink("does/not/exist", r("usr/bin/dangling")).unwrap();
    symlink("t".repeat(1000), r("usr/bin/long-target")).unwrap();
}

/// Builds a [`StagedTree`] from a directory on disk (our own test helper,
/// independent of `bakery::stage`).
fn tree_from_dir(root: &Path, mtime: u32) -> StagedTree {
    fn dir(path: &Path) -> DirNode {
        let mut node = DirNode {
            mode: (fs::metadata(path).unwrap().mode() & 0o7777) as u16,
            entries: BTreeMap::new(),
        };
        for e in fs::read_dir(path).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let name = EntryName::new(e.file_name().into_encoded_bytes()).unwrap();
            let child = if md.is_dir() {
                Node::Dir(dir(&p))
            } else if md.file_type().is_symlink() {
                Node::Symlink(SymlinkNode {
                    target: fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                })
            } else {
                Node::File(FileNode {
                    mode: (md.mode() & 0o7777) as u16,
                    content: FileContent::Path(p),
                })
            };
            node.entries.insert(name, child);
        }
        node
    }
    StagedTree {
        root: dir(root),
        mtime,
    }
}

/// What every path in an image must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir { subdirs: u64 },
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expect {
    mode: u32,
    kind: Kind,
}

fn expected(tree: &StagedTree) -> BTreeMap<String, Expect> {
    fn walk(d: &DirNode, path: &str, out: &mut BTreeMap<String, Expect>) {
        let subdirs = d
            .entries
            .values()
            .filter(|n| matches!(n, Node::Dir(_)))
            .count() as u64;
        out.insert(
            path.to_string(),
            Expect {
                mode: u32::from(d.mode),
                kind: Kind::Dir { subdirs },
            },
        );
        for (name, node) in &d.entries {
            let p = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}/{name}")
            };
            match node {
                Node::Dir(sub) => walk(sub, &p, out),
                Node::File(f) => {
                    let data = match &f.content {
                        FileContent::Path(src) => fs::read(src).unwrap(),
                        FileContent::Bytes(b) => b.clone(),
                    };
                    out.insert(
                        p,
                        Expect {
                            mode: u32::from(f.mode),
                            kind: Kind::File(data),
                        },
                    );
                }
                Node::Symlink(s) => {
                    out.insert(
                        p,
                        Expect {
                            mode: 0o777,
                            kind: Kind::Symlink(s.target.clone()),
                        },
                    );
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&tree.root, "", &mut out);
    out
}

/// The fixture tree plus one generated (in-memory) file.
fn fixture() -> (tempfile::TempDir, StagedTree) {
    let dir = tempfile::tempdir().unwrap();
    make_source(&dir.path().join("src"));
    let mut tree = tree_from_dir(&dir.path().join("src"), MTIME);
    let Some(Node::Dir(usr)) = tree.root.entries.get_mut(&EntryName::new("usr").unwrap()) else {
        panic!("fixture has usr/")
    };
    let Some(Node::Dir(lib)) = usr.entries.get_mut(&EntryName::new("lib").unwrap()) else {
        panic!("fixture has usr/lib/")
    };
    let mut release = DirNode {
        mode: 0o755,
        entries: BTreeMap::new(),
    };
    release.entries.insert(
        EntryName::new("extension-release.test").unwrap(),
        Node::File(FileNode {
            mode: 0o644,
            content: FileContent::Bytes(b"ID=_any\nSYSEXT_SCOPE=system\n".to_vec()),
        }),
    );
    lib.entries.insert(
        EntryName::new("extension-release.d").unwrap(),
        Node::Dir(release),
    );
    (dir, tree)
}

fn build(tree: &StagedTree, out: &Path, opts: &SquashfsOptions) -> SquashfsStats {
    let mut f = fs::File::create(out).unwrap();
    let stats =
        write_squashfs(tree, &mut f, opts).unwrap_or_else(|e| panic!("write_squashfs: {e}"));
    f.sync_all().unwrap();
    assert_eq!(fs::metadata(out).unwrap().len(), stats.bytes_written);
    stats
}

fn opts(c: Compression) -> SquashfsOptions {
    SquashfsOptions {
        compression: c,
        ..Default::default()
    }
}

/// Parses `unsquashfs -pf` (pseudo file definitions): exact mtime, octal
/// mode, uid, gid, file size, symlink target.
fn pseudo_listing(image: &Path, scratch: &Path) -> Vec<String> {
    let pf = scratch.join("listing.pf");
    run_ok(
        Command::new("unsquashfs")
            .arg("-no-progress")
            .arg("-pf")
            .arg(&pf)
            .arg(image),
    );
    let text = fs::read(&pf).unwrap();
    // Definitions come before the data section.
    let end = text
        .windows(9)
        .position(|w| w == b"#\n# START")
        .unwrap_or(text.len());
    String::from_utf8_lossy(&text[..end])
        .lines()
        .map(str::to_string)
        .collect()
}

fn check_image(image: &Path, expect: &BTreeMap<String, Expect>, c: Compression) {
    let scratch = tempfile::tempdir().unwrap();

    // Superblock as squashfs-tools sees it.
    let s = run_ok(Command::new("unsquashfs").arg("-s").arg(image));
    assert!(s.contains("Found a valid SQUASHFS 4:0 superblock"), "{s}");
    assert!(
        s.lines().any(|l| l == format!("Compression {c}")),
        "unsquashfs -s:\n{s}"
    );
    assert!(s.contains("Block size 131072"), "{s}");
    assert!(s.contains("Number of ids 1"), "{s}");
    assert!(
        s.contains(&format!("Number of inodes {}", expect.len())),
        "{s}"
    );
    let fstime = run_ok(Command::new("unsquashfs").arg("-mkfs-time").arg(image));
    assert_eq!(fstime.trim(), MTIME.to_string());

    // `-lln`: owners 0/0, modes, mtimes (minutes), sizes, symlink targets.
    let lln = run_ok(
        Command::new("unsquashfs")
            .env("TZ", "UTC")
            .args(["-UTC", "-lln"])
            .arg(image),
    );
    let mut seen = 0;
    for line in lln.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "unexpected -lln line {line:?}");
        let path = f[5]
            .strip_prefix("squashfs-root")
            .unwrap()
            .trim_start_matches('/');
        let e = expect
            .get(path)
            .unwrap_or_else(|| panic!("unsquashfs lists {path:?}, which is not in the tree"));
        let (type_char, size) = match &e.kind {
            Kind::Dir { .. } => ('d', None),
            Kind::File(d) => ('-', Some(d.len())),
            Kind::Symlink(t) => ('l', Some(t.len())),
        };
        assert_eq!(f[0], mode_string(type_char, e.mode), "mode of {path}");
        assert_eq!(f[1], "0/0", "owner of {path}");
        if let Some(size) = size {
            assert_eq!(f[2], size.to_string(), "size of {path}");
        }
        assert_eq!(format!("{} {}", f[3], f[4]), MTIME_TEXT, "mtime of {path}");
        if let Kind::Symlink(t) = &e.kind {
            assert_eq!(
                f.get(6..8),
                Some(&["->", &*String::from_utf8_lossy(t)][..]),
                "{line}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, expect.len(), "-lln lists every inode once");

    // `-pf`: exact seconds.
    let pf = pseudo_listing(image, scratch.path());
    assert_eq!(pf.len(), expect.len(), "{pf:?}");
    for line in &pf {
        let f: Vec<&str> = line.split(' ').collect();
        let path = if f[0] == "/" { "" } else { f[0] };
        let e = &expect[path];
        assert_eq!(f[2], MTIME.to_string(), "mtime of {line}");
        assert_eq!(f[3], format!("{:o}", e.mode), "mode of {line}");
        assert_eq!((f[4], f[5]), ("0", "0"), "owner of {line}");
    }

    // Extraction, byte for byte.
    let dest = scratch.path().join("x");
    run_ok(
        Command::new("unsquashfs")
            .args(["-no-progress", "-d"])
            .arg(&dest)
            .arg(image),
    );
    compare_dir(&dest, expect, "unsquashfs -d");
}

fn mode_string(type_char: char, mode: u32) -> String {
    let mut s = String::from(type_char);
    let bit = |b: u32, c: char| if mode & b != 0 { c } else { '-' };
    let special = |x: bool, exec: bool, on: char, off: char| match (x, exec) {
        (true, true) => on,
        (true, false) => off,
        (false, true) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(mode & 0o4000 != 0, mode & 0o100 != 0, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(mode & 0o2000 != 0, mode & 0o010 != 0, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(mode & 0o1000 != 0, mode & 0o001 != 0, 't', 'T'));
    s
}

/// Compares an extracted or mounted tree with the expectation: the same
/// paths, file bytes, symlink targets, permission bits.
fn compare_dir(root: &Path, expect: &BTreeMap<String, Expect>, what: &str) {
    let mut found = BTreeMap::new();
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, (u32, Kind)>) {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let md = fs::symlink_metadata(&p).unwrap();
        let mode = md.mode() & 0o7777;
        if md.is_dir() {
            let mut subdirs = 0;
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if e.file_type().unwrap().is_dir() {
                    subdirs += 1;
                }
                walk(root, &child, out);
            }
            out.insert(rel.to_string(), (mode, Kind::Dir { subdirs }));
        } else if md.file_type().is_symlink() {
            let t = fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes();
            out.insert(rel.to_string(), (0o777, Kind::Symlink(t)));
        } else {
            out.insert(rel.to_string(), (mode, Kind::File(fs::read(&p).unwrap())));
        }
    }
    walk(root, "", &mut found);
    let exp_paths: Vec<&String> = expect.keys().collect();
    let got_paths: Vec<&String> = found.keys().collect();
    assert_eq!(got_paths, exp_paths, "{what}: the set of paths differs");
    for (path, e) in expect {
        let (mode, kind) = &found[path];
        // The extraction directory itself is created with the image root's
        // mode only by the kernel mount; unsquashfs -d chmods it too.
        assert_eq!(*mode, e.mode, "{what}: mode of {path:?}");
        assert!(*kind == e.kind, "{what}: content of {path:?} differs");
    }
}

#[test]
fn every_compressor_round_trips_through_unsquashfs() {
    require_tool("unsquashfs", "squashfs-tools");
    let (dir, tree) = fixture();
    let expect = expected(&tree);
    for c in Compression::ALL {
        let image = dir.path().join(format!("{c}.img"));
        let stats = build(&tree, &image, &opts(c));
        assert_eq!(stats.bytes_written % 4096, 0, "{c}: padded to 4 KiB");
        assert_eq!(stats.inodes, expect.len() as u64);
        check_image(&image, &expect, c);
    }
}

#[test]
fn stats_show_duplicates_sparse_fragments_and_raw_blocks() {
    let (dir, tree) = fixture();
    let image = dir.path().join("img");
    let s = build(&tree, &image, &opts(Compression::Zstd));
    // big-copy, and every 7th small file except the first of them.
    let same = (0..600).filter(|i| i % 7 == 3).count() as u64;
    assert_eq!(s.duplicate_files, 1 + same - 1, "{s:?}");
    // usr/bin/zeros (4) and the zero region of big (3; big-copy is shared).
    assert_eq!(s.sparse_blocks, 7, "{s:?}");
    assert!(
        s.uncompressed_blocks >= 6,
        "random blocks are stored raw: {s:?}"
    );
    assert!(s.fragment_blocks >= 2, "{s:?}");
    assert_eq!(
        s.bytes_used + (4096 - s.bytes_used % 4096) % 4096,
        s.bytes_written
    );
}

#[test]
fn output_is_identical_across_runs_and_thread_counts() {
    let (dir, tree) = fixture();
    let mut images = Vec::new();
    for threads in [1, 2, 3, 8, 0] {
        let p = dir.path().join(format!("t{threads}.img"));
        build(
            &tree,
            &p,
            &SquashfsOptions {
                threads,
                ..Default::default()
            },
        );
        images.push((threads, fs::read(&p).unwrap()));
    }
    for (threads, bytes) in &images[1..] {
        assert!(
            *bytes == images[0].1,
            "image with {threads} threads differs from the one with 1 thread"
        );
    }
    // A different mtime must change the image.
    let mut later = tree.clone();
    later.mtime += 60;
    let p = dir.path().join("later.img");
    build(&later, &p, &SquashfsOptions::default());
    assert!(fs::read(&p).unwrap() != images[0].1);
}

/// mksquashfs on the same directory, with every inode owned by root and
/// stamped with MTIME, must give the same listing and the same data, and
/// our image must not be more than 2 % larger.
#[test]
fn matches_mksquashfs_listing_data_and_size() {
    require_tool("mksquashfs", "squashfs-tools");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let tree = tree_from_dir(&src, MTIME);
    let ours = dir.path().join("ours.img");
    build(&tree, &ours, &SquashfsOptions::default());
    let theirs = dir.path().join("theirs.img");
    run_ok(
        Command::new("mksquashfs")
            .arg(&src)
            .arg(&theirs)
            .args(["-comp", "zstd", "-Xcompression-level", "15", "-b", "128K"])
            .args([
                "-noappend",
                "-all-root",
                "-no-progress",
                "-quiet",
                "-processors",
                "2",
            ])
            .args([
                "-mkfs-time",
                &MTIME.to_string(),
                "-all-time",
                &MTIME.to_string(),
            ]),
    );
    // The whole pseudo-file output, definitions and data, must be equal.
    let pf = |img: &Path, name: &str| {
        let out = dir.path().join(name);
        run_ok(
            Command::new("unsquashfs")
                .arg("-no-progress")
                .arg("-pf")
                .arg(&out)
                .arg(img),
        );
        fs::read(out).unwrap()
    };
    let (a, b) = (pf(&ours, "ours.pf"), pf(&theirs, "theirs.pf"));
    assert!(
        a == b,
        "unsquashfs -pf differs between our image and mksquashfs'"
    );
    let (a, b) = (
        fs::metadata(&ours).unwrap().len(),
        fs::metadata(&theirs).unwrap().len(),
    );
    assert!(
        a as f64 <= b as f64 * 1.02,
        "our image is {a} bytes, mksquashfs' {b} bytes"
    );
}

/// The kernel reads what we wrote: mount every compressor's image through a
/// loop device in a private mount namespace, walk it with `find` (lookups
/// by name use the directory index), copy it out with `cp -a`, and compare.
#[test]
fn kernel_mounts_the_image() {
    require_root();
    require_tool("unshare", "util-linux");
    let (dir, tree) = fixture();
    let expect = expected(&tree);
    for c in Compression::ALL {
        let image = dir.path().join(format!("{c}.img"));
        build(&tree, &image, &opts(c));
        let mnt = dir.path().join(format!("mnt-{c}"));
        let copy = dir.path().join(format!("copy-{c}"));
        let list = dir.path().join(format!("list-{c}"));
        fs::create_dir(&mnt).unwrap();
        let (img_q, mnt_q, copy_q, list_q) = (
            shell_quote(image.as_os_str()),
            shell_quote(mnt.as_os_str()),
            shell_quote(copy.as_os_str()),
            shell_quote(list.as_os_str()),
        );
        let out = in_private_mount_ns(&format!(
            "mount -t squashfs -o loop,ro {img_q} {mnt_q}\n\
             (cd {mnt_q} && find . -printf '%P|%y|%m|%U|%G|%T@|%n|%i\\n') > {list_q}\n\
             stat -c %n {mnt_q}/usr/share/long/299-{long} >/dev/null\n\
             cp -a {mnt_q} {copy_q}\n\
             umount {mnt_q}\n",
            long = "n".repeat(200)
        ));
        assert!(
            out.status.success(),
            "{c}: mounting or reading the image failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = fs::read_to_string(&list).unwrap();
        let mut inos = std::collections::HashSet::new();
        let mut n = 0;
        for line in listing.lines() {
            let f: Vec<&str> = line.split('|').collect();
            let e = expect
                .get(f[0])
                .unwrap_or_else(|| panic!("{c}: mounted image has {:?} not in the tree", f[0]));
            assert_eq!((f[3], f[4]), ("0", "0"), "{c}: owner of {line}");
            assert_eq!(
                f[5].split('.').next(),
                Some(MTIME.to_string().as_str()),
                "{c}: mtime of {line}"
            );
            assert_eq!(f[2], format!("{:o}", e.mode), "{c}: mode of {line}");
            let (ty, nlink) = match e.kind {
                Kind::Dir { subdirs } => ("d", 2 + subdirs),
                Kind::File(_) => ("f", 1),
                Kind::Symlink(_) => ("l", 1),
            };
            assert_eq!(
                (f[1], f[6]),
                (ty, nlink.to_string().as_str()),
                "{c}: {line}"
            );
            assert!(
                inos.insert(f[7].to_string()),
                "{c}: inode number reused: {line}"
            );
            n += 1;
        }
        assert_eq!(n, expect.len(), "{c}: find saw every inode once");
        compare_dir(&copy, &expect, &format!("{c} kernel mount"));
    }
}

#[test]
fn image_starts_at_the_file_position() {
    require_tool("unsquashfs", "squashfs-tools");
    let (dir, tree) = fixture();
    let p = dir.path().join("offset.img");
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(&[0xAA; 8192]).unwrap();
    let stats = write_squashfs(&tree, &mut f, &SquashfsOptions::default()).unwrap();
    assert_eq!(f.stream_position().unwrap(), 8192 + stats.bytes_written);
    drop(f);
    let out = dir.path().join("x");
    run_ok(
        Command::new("unsquashfs")
            .args(["-no-progress", "-o", "8192", "-d"])
            .arg(&out)
            .arg(&p),
    );
    compare_dir(&out, &expected(&tree), "unsquashfs -o 8192");
}

fn single_file_tree(content: FileContent) -> StagedTree {
    let mut usr = DirNode {
        mode: 0o755,
        entries: BTreeMap::new(),
    };
    usr.entries.insert(
        EntryName::new("f").unwrap(),
        Node::File(FileNode {
            mode: 0o644,
            content,
        }),
    );
    let mut root = DirNode {
        mode: 0o755,
        entries: BTreeMap::new(),
    };
    root.entries
        .insert(EntryName::new("usr").unwrap(), Node::Dir(usr));
    StagedTree { root, mtime: 0 }
}

fn write_err(tree: &StagedTree) -> SquashfsError {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fs::File::create(dir.path().join("img")).unwrap();
    write_squashfs(tree, &mut f, &SquashfsOptions::default()).expect_err("must fail")
}

#[test]
fn bad_sources_are_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-file");
    let e = write_err(&single_file_tree(FileContent::Path(missing.clone())));
    let msg = e.to_string();
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("/usr/f"),
        "{msg}"
    );

    let fifo = dir.path().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let msg = write_err(&single_file_tree(FileContent::Path(fifo.clone()))).to_string();
    assert!(
        msg.contains(&fifo.display().to_string()) && msg.contains("not a regular file"),
        "{msg}"
    );

    let link = dir.path().join("link");
    symlink("/etc/passwd", &link).unwrap();
    let msg = write_err(&single_file_tree(FileContent::Path(link.clone()))).to_string();
    assert!(
        msg.contains("not a regular file"),
        "symlinks are not followed: {msg}"
    );

    let mut tree = single_file_tree(FileContent::Bytes(vec![]));
    tree.root.entries.insert(
        EntryName::new("bad-link").unwrap(),
        Node::Symlink(SymlinkNode { target: vec![] }),
    );
    let msg = write_err(&tree).to_string();
    assert!(msg.contains("/bad-link") && msg.contains("empty"), "{msg}");
}

#[test]
fn bad_options_are_rejected_before_writing() {
    let tree = single_file_tree(FileContent::Bytes(b"x".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    for (o, needle) in [
        (
            SquashfsOptions {
                block_size: 100_000,
                ..Default::default()
            },
            "block size 100000",
        ),
        (
            SquashfsOptions {
                level: Some(23),
                ..Default::default()
            },
            "zstd compression level 23",
        ),
        (
            SquashfsOptions {
                compression: Compression::Lz4,
                level: Some(1),
                ..Default::default()
            },
            "no compression levels",
        ),
    ] {
        let p = dir.path().join("img");
        let mut f = fs::File::create(&p).unwrap();
        let msg = write_squashfs(&tree, &mut f, &o)
            .expect_err("must fail")
            .to_string();
        assert!(msg.contains(needle), "{msg}");
        assert_eq!(fs::metadata(&p).unwrap().len(), 0, "nothing written");
    }
}

#[test]
fn non_default_levels_and_block_sizes_are_readable() {
    require_tool("unsquashfs", "squashfs-tools");
    let (dir, tree) = fixture();
    let expect = expected(&tree);
    for o in [
        SquashfsOptions {
            level: Some(3),
            block_size: 4096,
            ..Default::default()
        },
        SquashfsOptions {
            compression: Compression::Gzip,
            level: Some(1),
            block_size: 1 << 20,
            ..Default::default()
        },
        SquashfsOptions {
            compression: Compression::Xz,
            level: Some(0),
            block_size: 65536,
            ..Default::default()
        },
    ] {
        let image = dir.path().join("lvl.img");
        build(&tree, &image, &o);
        let s = run_ok(Command::new("unsquashfs").arg("-s").arg(&image));
        assert!(s.contains(&format!("Block size {}", o.block_size)), "{s}");
        assert!(
            s.lines()
                .any(|l| l == format!("Compression {}", o.compression)),
            "{s}"
        );
        if let Some(level) = o.level.filter(|_| o.compression != Compression::Xz) {
            assert!(s.contains(&format!("compression-level {level}")), "{s}");
        }
        let out = dir.path().join(format!("x-{}", o.block_size));
        run_ok(
            Command::new("unsquashfs")
                .args(["-no-progress", "-d"])
                .arg(&out)
                .arg(&image),
        );
        compare_dir(&out, &expect, &format!("{o:?}"));
    }
}

#[test]
fn empty_tree_is_a_valid_image() {
    require_tool("unsquashfs", "squashfs-tools");
    let dir = tempfile::tempdir().unwrap();
    let tree = StagedTree {
        root: DirNode {
            mode: 0o755,
            entries: BTreeMap::new(),
        },
        mtime: MTIME,
    };
    let image = dir.path().join("empty.img");
    let stats = build(&tree, &image, &SquashfsOptions::default());
    assert_eq!(stats.inodes, 1);
    let out = dir.path().join("x");
    run_ok(
        Command::new("unsquashfs")
            .args(["-no-progress", "-d"])
            .arg(&out)
            .arg(&image),
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}
