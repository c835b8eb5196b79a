//! Shared by the `runtime_*` tests of the node runtime (`merge-runtime`):
//! running a test body inside its own private mount namespace, a host root
//! for `--root`, extension image fixtures made with the real tools
//! (mksquashfs, veritysetup, openssl, sfdisk), and checks for leftover
//! mounts and loop devices.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(unused_imports)] // re-exported for the test files; not every one uses all
pub use integration_tests::{require_root, require_tool, run_ok};

const IN_NS: &str = "SYSEXT_RUNTIME_TEST_IN_NS";

/// Runs the calling test (named `name`, a top-level `#[test]` fn) again in
/// a child process inside `unshare --mount --propagation private`, and
/// returns `false` in the parent (which then just returns). In the child
/// it prepares the namespace (a private tmpfs on `/run`) and returns
/// `true`: the body runs there. Not being root is a failure.
pub fn in_private_ns(name: &str) -> bool {
    integration_tests::rerun_in_private_ns(
        name,
        IN_NS,
        &[
            ("mksquashfs", "squashfs-tools"),
            ("veritysetup", "cryptsetup-bin"),
            ("systemd-sysext", "systemd"),
            ("sfdisk", "fdisk"),
            ("openssl", "openssl"),
            ("losetup", "mount"),
        ],
    )
}

/// A host tree for `--root`, on its own shared bind mount so that
/// systemd-sysext's child-namespace mounts propagate back to us.
pub struct Host {
    pub dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        // Lazily: merged trees below may still be mounted.
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.path())
            .status();
    }
}

impl Host {
    /// `usr/lib/os-release` = `ID=debian VERSION_ID=12`, `usr/share/common.txt`
    /// = `host`, plus the extension directories.
    pub fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("rt-host")
            .tempdir()
            .unwrap();
        let p = dir.path();
        for d in [
            "etc/extensions",
            "run/extensions",
            "var/lib/extensions",
            "usr/lib",
            "usr/share",
            "etc/verity.d",
        ] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        fs::write(p.join("usr/lib/os-release"), "ID=debian\nVERSION_ID=12\n").unwrap();
        fs::write(p.join("usr/share/common.txt"), "host\n").unwrap();
        fs::write(p.join("usr/share/host-only.txt"), "host only\n").unwrap();
        let q = p.to_str().unwrap();
        run_ok(Command::new("mount").args(["--bind", q, q]));
        run_ok(Command::new("mount").args(["--make-shared", q]));
        Host { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    pub fn options(&self) -> merge_runtime::Options {
        let mut o = merge_runtime::Options::new(self.path());
        o.no_reload = true;
        o
    }
}

/// Writes an extension tree: `usr/lib/extension-release.d/extension-release.NAME`
/// with `release`, and `files` (path, content).
pub fn ext_tree(dir: &Path, name: &str, release: &str, files: &[(&str, &str)]) {
    let rel = dir.join("usr/lib/extension-release.d");
    fs::create_dir_all(&rel).unwrap();
    fs::write(rel.join(format!("extension-release.{name}")), release).unwrap();
    for (p, c) in files {
        let f = dir.join(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, c).unwrap();
    }
}

/// `mksquashfs SRC OUT` (root-owned, padded to 4 KiB as by default).
pub fn squashfs(src: &Path, out: &Path) {
    let _ = fs::remove_file(out);
    run_ok(Command::new("mksquashfs").arg(src).arg(out).args([
        "-noappend",
        "-quiet",
        "-all-root",
        "-no-progress",
    ]));
}

/// Builds a squashfs extension image at `out` from a fresh tree.
pub fn squashfs_ext(work: &Path, out: &Path, name: &str, release: &str, files: &[(&str, &str)]) {
    let src = work.join(format!(
        "src-{name}-{}",
        out.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_dir_all(&src);
    ext_tree(&src, name, release, files);
    squashfs(&src, out);
}

/// `veritysetup format DATA HASH`; returns the root hash (hex).
pub fn veritysetup_format(data: &Path, hash: &Path) -> String {
    let out = run_ok(
        Command::new("veritysetup")
            .arg("format")
            .arg(data)
            .arg(hash),
    );
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|s| s.trim().to_string())
        .expect("veritysetup printed a root hash")
}

/// Writes `IMAGE.verity` and `IMAGE.roothash` (bare image sidecars).
pub fn sidecars(image: &Path) -> String {
    let stem = image.with_extension("");
    let verity = PathBuf::from(format!("{}.verity", stem.display()));
    let root = veritysetup_format(image, &verity);
    fs::write(format!("{}.roothash", stem.display()), format!("{root}\n")).unwrap();
    root
}

/// A self-signed RSA key and certificate made by openssl.
pub struct Key {
    pub key: PathBuf,
    pub cert: PathBuf,
}

pub fn openssl_key(dir: &Path, cn: &str) -> Key {
    let key = dir.join(format!("{cn}.key"));
    let cert = dir.join(format!("{cn}.crt"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
            ])
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    Key { key, cert }
}

/// Detached PKCS#7 over the hex root hash, as systemd-repart makes it
/// (`openssl smime -sign -nocerts -noattr -binary`, DER).
pub fn sign_root_hash(root_hash: &str, key: &Key, work: &Path) -> Vec<u8> {
    let input = work.join(format!("rh-{root_hash}"));
    let out = work.join(format!("rh-{root_hash}.p7s"));
    fs::write(&input, root_hash).unwrap();
    run_ok(
        Command::new("openssl")
            .args([
                "smime", "-sign", "-nocerts", "-noattr", "-binary", "-outform", "der",
            ])
            .arg("-in")
            .arg(&input)
            .arg("-inkey")
            .arg(&key.key)
            .arg("-signer")
            .arg(&key.cert)
            .arg("-out")
            .arg(&out),
    );
    fs::read(out).unwrap()
}

/// Trusts `key` under `host` (`etc/verity.d/NAME.crt`).
pub fn trust(host: &Host, key: &Key, name: &str) {
    fs::copy(&key.cert, host.p(&format!("etc/verity.d/{name}.crt"))).unwrap();
}

fn uuid_of(bytes: &[u8]) -> String {
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn cert_fingerprint(cert: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(cert),
    );
    out.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase()
}

/// The parts of a DDI made by [`ddi`], for tampering.
pub struct Ddi {
    pub path: PathBuf,
    pub root_hash: String,
    /// Byte offset and length of the data (filesystem) partition.
    pub data: (u64, u64),
    pub sig: Option<(u64, u64)>,
}

/// Builds a DDI the way systemd-repart lays it out, with the real tools
/// only: the filesystem (`fs`, a squashfs), its verity tree from
/// `veritysetup format`, the signature partition (JSON with the
/// `openssl smime` signature) when `key` is given, and a GPT written by
/// `sfdisk` with the x86-64 root partition types, partition UUIDs from
/// the root hash and the read-only attribute.
pub fn ddi(fs_image: &Path, out: &Path, key: Option<&Key>, work: &Path) -> Ddi {
    const MIB: u64 = 1 << 20;
    let stem = out.file_name().unwrap().to_string_lossy().to_string();
    let data = work.join(format!("{stem}.data"));
    fs::copy(fs_image, &data).unwrap();
    let len = fs::metadata(&data).unwrap().len();
    let padded = len.div_ceil(4096) * 4096;
    fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(padded)
        .unwrap();
    let hash = work.join(format!("{stem}.hash"));
    let root = veritysetup_format(&data, &hash);
    let root_bytes = hex::decode(&root).unwrap();
    let hash_len = fs::metadata(&hash).unwrap().len();
    let sig_content = key.map(|k| {
        let der = sign_root_hash(&root, k, work);
        let json = serde_json::json!({
            "rootHash": root,
            "certificateFingerprint": cert_fingerprint(&k.cert),
            "signature": base64_encode(&der),
        })
        .to_string();
        let mut b = json.into_bytes();
        b.resize(16 * 1024, 0);
        b
    });
    let align = |v: u64| v.div_ceil(MIB) * MIB;
    let data_off = MIB;
    let data_len = align(padded);
    let hash_off = data_off + data_len;
    let hash_len_al = align(hash_len);
    let sig_off = hash_off + hash_len_al;
    let sig_len = if sig_content.is_some() { MIB } else { 0 };
    let total = sig_off + sig_len + MIB;
    let _ = fs::remove_file(out);
    let f = fs::File::create(out).unwrap();
    f.set_len(total).unwrap();
    drop(f);
    let mut script = String::from("label: gpt\nunit: sectors\n");
    let part = |off: u64, len: u64, ty: &str, uuid: &str, name: &str| {
        format!(
            "start={}, size={}, type={ty}, uuid={uuid}, name=\"{name}\", attrs=\"GUID:60\"\n",
            off / 512,
            len / 512
        )
    };
    script += &part(
        data_off,
        data_len,
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        &uuid_of(&root_bytes[..16]),
        "root-x86-64",
    );
    script += &part(
        hash_off,
        hash_len_al,
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
        &uuid_of(&root_bytes[16..]),
        "root-x86-64-verity",
    );
    if sig_content.is_some() {
        script += &part(
            sig_off,
            sig_len,
            "41092b05-9fc8-4523-994f-2def0408b176",
            "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
            "root-x86-64-verity-sig",
        );
    }
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "sfdisk failed: {}\n{script}",
        String::from_utf8_lossy(&o.stderr)
    );
    write_at(out, data_off, &fs::read(&data).unwrap());
    write_at(out, hash_off, &fs::read(&hash).unwrap());
    if let Some(s) = &sig_content {
        write_at(out, sig_off, s);
    }
    Ddi {
        path: out.to_path_buf(),
        root_hash: root,
        data: (data_off, data_len),
        sig: sig_content.map(|_| (sig_off, sig_len)),
    }
}

pub fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

pub fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// What a file system entry looks like, for comparing merged trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: PathBuf },
    Other,
}

/// Every entry below `dir` (recursively, symlinks not followed), keyed by
/// relative path.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Entry> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let entry = if md.is_dir() {
                walk(base, &p, out);
                Entry::Dir { mode }
            } else if md.is_file() {
                Entry::File {
                    mode,
                    content: fs::read(&p).unwrap(),
                }
            } else if md.file_type().is_symlink() {
                Entry::Symlink {
                    target: fs::read_link(&p).unwrap(),
                }
            } else {
                Entry::Other
            };
            out.insert(rel, entry);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Mount points at or below `dir` other than `dir` itself (this namespace).
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let canon = fs::canonicalize(dir).unwrap();
    let prefix = format!("{}/", canon.display());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Loop devices (name) whose backing file is one of `files` (by inode).
pub fn loops_backed_by(files: &[PathBuf]) -> Vec<String> {
    let ids: Vec<(u64, u64)> = files
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let out = run_ok(Command::new("losetup").args([
        "--list",
        "--noheadings",
        "--raw",
        "-O",
        "NAME,BACK-INO,BACK-MAJ:MIN",
    ]));
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 3 {
                return None;
            }
            let ino: u64 = f[1].parse().ok()?;
            // `--raw` escapes the column padding as \x20.
            let majmin = f[2].replace("\\x20", "");
            let (ma, mi) = majmin.trim().split_once(':')?;
            let dev = libc_makedev(ma.parse().ok()?, mi.parse().ok()?);
            ids.contains(&(dev, ino)).then(|| f[0].to_string())
        })
        .collect()
}

fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

/// Waits (up to 5 s) until no loop device is backed by `files`; returns
/// the ones still there.
pub fn wait_loops_gone(files: &[PathBuf]) -> Vec<String> {
    for _ in 0..50 {
        let l = loops_backed_by(files);
        if l.is_empty() {
            return l;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    loops_backed_by(files)
}

/// `systemd-sysext status --root=ROOT --json=short`, parsed. systemd 252
/// reads `HIERARCHY/.systemd-sysext/extensions` *without* the root prefix
/// (a bug fixed later), so it runs in a nested namespace where `/usr` and
/// `/opt` are overlays with ROOT's merged trees on top.
pub fn systemd_status(root: &Path) -> serde_json::Value {
    let r = root.display();
    let script = format!(
        "for h in usr opt; do if [ -d /$h ] && [ -d {r}/$h ]; then \
           mount -t overlay overlay -o lowerdir={r}/$h:/$h /$h; fi; done; \
         exec systemd-sysext status --root={r} --json=short"
    );
    let out = run_ok(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-ec"])
            .arg(script),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("systemd-sysext status JSON: {e}: {out}"))
}

/// Runs the real systemd-sysext with `--root`.
pub fn systemd_sysext(root: &Path, verb: &str) -> String {
    let mut c = Command::new("systemd-sysext");
    c.arg(verb).arg(format!("--root={}", root.display()));
    let out = c.output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-sysext {verb} failed: {all}");
    all
}
