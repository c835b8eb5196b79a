//! End-to-end tests of the node runtime on a real kernel with
//! device-mapper: Debian's kernel booted under qemu (TCG) with an initramfs
//! holding busybox, the kernel modules, our `sysext` binary and `dmsetup`
//! (see `integration_tests::vm`).
//!
//! One boot runs every scenario (each in its own `--root` directory in the
//! guest) to keep the suite fast; each `#[test]` below checks its part of
//! that run. The DDIs are built by `bakery build --format ddi`; an erofs DDI
//! and a squashfs with sidecar files are made with mkfs.erofs/mksquashfs
//! and sealed with the `signing` crate. They are signed by a key whose
//! certificate the guest roots trust, or by an untrusted one.
//!
//! The update cycle (v1 → v2, failed health check → v1) pulls from a feed
//! that the host serves on 127.0.0.1 only; the guest reaches it through qemu
//! user networking (the host's loopback is 10.0.2.2 there).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use integration_tests::upstream::Upstream;
use integration_tests::vm::{tar_disk, Initramfs, Kernel, Vm, VmRun};
use sha2::{Digest, Sha256};
use signing::ddi::{write_ddi, DdiOptions};
use signing::keys::{keygen_with, KeygenOptions, SigningKey};
use signing::openpgp::{Algorithm, OpenPgpSecretKey};
use sysupdate::Arch;

const EXT: &str = "vmtest";
const MODULES: &[&str] = &[
    "dm-mod",
    "dm-verity",
    "loop",
    "overlay",
    "squashfs",
    "erofs",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
];
/// Size of `data.bin`: two full 128 KiB squashfs blocks, no fragment.
const DATA_LEN: usize = 256 * 1024;
/// Where in `data.bin` a byte is flipped for the tampered image: in the
/// middle of the second block, far from the filesystem's metadata.
const TAMPER_AT: usize = 192 * 1024;

/// Pseudo-random, so incompressible: squashfs stores its blocks as they
/// are (also with compression on), and the tamper test can find them in
/// the image.
fn data_bin() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..DATA_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Writes the extension's files (`usr/share/EXT/…`) under `root`.
fn content(root: &Path, version: &str) {
    let share = root.join("usr/share").join(EXT);
    fs::create_dir_all(&share).unwrap();
    fs::write(
        share.join("hello.txt"),
        format!("hello from {EXT} {version}\n"),
    )
    .unwrap();
    fs::write(share.join("data.bin"), data_bin()).unwrap();
}

/// `bakery build --format ddi` of a recipe for `version` that fits hosts
/// with `ID=os_id VERSION_ID=12`, signed with `key` (PEM path; its
/// certificate beside it as `.crt`), or verity-only without a key.
fn bakery_ddi(dir: &Path, version: &str, os_id: &str, key: Option<&Path>, out: &Path) -> Vec<u8> {
    let name = out.file_stem().unwrap().to_string_lossy().into_owned();
    let recipe = dir.join(format!("recipe-{name}"));
    content(&recipe.join("files"), version);
    fs::write(
        recipe.join("recipe.toml"),
        format!(
            "name = \"{EXT}\"\nversion = \"{version}\"\ndescription = \"VM test extension\"\n\
             os = \"{os_id}\"\nversion-id = \"12\"\narchitectures = [\"x86-64\"]\n"
        ),
    )
    .unwrap();
    let outdir = dir.join(format!("bakery-out-{name}"));
    let mut cmd = Command::new(integration_tests::bakery_bin());
    cmd.arg("build")
        .arg(&recipe)
        .args(["--format", "ddi", "--arch", "x86-64", "--output"])
        .arg(&outdir)
        .env("SOURCE_DATE_EPOCH", "0")
        .env_remove("BAKERY_SIGNING_KEY")
        .env_remove("BAKERY_SIGNING_CERT");
    if let Some(key) = key {
        cmd.arg("--key").arg(key);
    }
    integration_tests::run_ok(&mut cmd);
    let built = outdir.join(format!("{EXT}-{version}-x86-64.raw"));
    fs::copy(&built, out)
        .unwrap_or_else(|e| panic!("bakery did not write {}: {e}", built.display()));
    fs::read(out).unwrap()
}

/// A tree with the extension's files and an extension-release for
/// `ID=os_id VERSION_ID=12`, for the mksquashfs/mkfs.erofs images.
fn tree(dir: &Path, version: &str, os_id: &str) -> PathBuf {
    let tree = dir.join(format!("tree-{version}-{os_id}"));
    let rel = tree.join("usr/lib/extension-release.d");
    fs::create_dir_all(&rel).unwrap();
    fs::write(
        rel.join(format!("extension-release.{EXT}")),
        format!("ID={os_id}\nVERSION_ID=12\nARCHITECTURE=x86-64\n"),
    )
    .unwrap();
    content(&tree, version);
    tree
}

/// mksquashfs of [`tree`].
fn squashfs(dir: &Path, version: &str, os_id: &str) -> PathBuf {
    let tree = tree(dir, version, os_id);
    let out = dir.join(format!("{EXT}-{version}-{os_id}.squashfs"));
    integration_tests::require_tool("mksquashfs", "squashfs-tools");
    integration_tests::run_ok(Command::new("mksquashfs").arg(&tree).arg(&out).args([
        "-noappend",
        "-all-root",
        "-no-xattrs",
        "-quiet",
    ]));
    out
}

/// mkfs.erofs of [`tree`] (uncompressed).
fn erofs(dir: &Path, version: &str, os_id: &str) -> PathBuf {
    let tree = tree(dir, version, os_id);
    let out = dir.join(format!("{EXT}-{version}-{os_id}.erofs"));
    integration_tests::require_tool("mkfs.erofs", "erofs-utils");
    integration_tests::run_ok(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg("--all-root")
            .arg(&out)
            .arg(&tree),
    );
    out
}

struct TestKey {
    key: SigningKey,
    key_path: PathBuf,
    cert_path: PathBuf,
}

fn key(dir: &Path, name: &str) -> TestKey {
    let kd = dir.join(name);
    let g = keygen_with(
        &kd,
        &format!("sysext-forge VM test {name}"),
        KeygenOptions {
            rsa_bits: 2048,
            validity_days: 30,
        },
    )
    .expect("keygen");
    let key = SigningKey::from_files(&g.key_path, &g.cert_path, None).expect("load key");
    TestKey {
        key,
        key_path: g.key_path,
        cert_path: g.cert_path,
    }
}

fn ddi(fs_image: &Path, out: &Path, key: &SigningKey) -> Vec<u8> {
    write_ddi(
        fs_image,
        out,
        &DdiOptions {
            arch: Arch::X86_64,
            key: Some(key),
            verity: None,
        },
    )
    .expect("write_ddi");
    fs::read(out).unwrap()
}

/// Flips one byte inside `data.bin`'s content in `image`.
fn tamper(image: &[u8]) -> Vec<u8> {
    let data = data_bin();
    let needle = &data[TAMPER_AT..TAMPER_AT + 64];
    let mut hits = image
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    let at = hits
        .next()
        .expect("data.bin's (incompressible) blocks are stored as they are in the image");
    assert!(hits.next().is_none(), "the 64 bytes must occur once");
    let mut t = image.to_vec();
    t[at + 5] ^= 0x01;
    t
}

/// Publishes v1 and v2 as a sysupdate feed under `/EXT/` on `server`
/// (`SHA256SUMS` signed with a new OpenPGP key); returns the transfer file
/// the guest uses and the public keyring.
fn feed(server: &Upstream, guest_base: &str, v1: &[u8], v2: &[u8]) -> (String, Vec<u8>) {
    let key = OpenPgpSecretKey::generate("sysext-forge VM test feed", Algorithm::Ed25519)
        .expect("OpenPGP key");
    let sums = format!(
        "{}  {EXT}_1.raw\n{}  {EXT}_2.raw\n",
        sha256_hex(v1),
        sha256_hex(v2)
    );
    server.insert(&format!("/{EXT}/{EXT}_1.raw"), v1.to_vec());
    server.insert(&format!("/{EXT}/{EXT}_2.raw"), v2.to_vec());
    server.insert(
        &format!("/{EXT}/SHA256SUMS.gpg"),
        key.sign_detached(sums.as_bytes()).expect("sign SHA256SUMS"),
    );
    server.insert(&format!("/{EXT}/SHA256SUMS"), sums.into_bytes());
    let transfer = format!(
        "[Transfer]\nVerify=yes\n\n\
         [Source]\nType=url-file\nPath={guest_base}/{EXT}/\nMatchPattern={EXT}_@v.raw\n\n\
         [Target]\nType=regular-file\nPath=/var/lib/extensions.d\nMatchPattern={EXT}_@v.raw\n\
         CurrentSymlink=/var/lib/extensions/{EXT}.raw\nInstancesMax=3\n"
    );
    (transfer, key.public_keyring().expect("public keyring"))
}

fn scenario(probe_url: &str, probe_sha: &str, data_sha: &str) -> String {
    format!(
        r#"set -u
mkdir -p /sc && mount -t tmpfs -o size=512m tmpfs /sc
mkdir -p /sc/images && cd /sc/images && tar -xf /dev/vda && cd /
check disk test -s /sc/images/good.raw
echo "kernel $(uname -r)"
check dm-control test -c /dev/mapper/control
check verity-target sh -c 'DM_DISABLE_UDEV=1 dmsetup targets | grep -q "^verity"'
run_blob targets env DM_DISABLE_UDEV=1 dmsetup targets

mkroot() {{
  R=/sc/$1
  mkdir -p $R/etc/verity.d $R/usr/share $R/var/lib/extensions $R/opt
  printf 'ID=debian\nVERSION_ID=12\n' > $R/etc/os-release
  echo host > $R/usr/share/host-marker
  cp /sc/images/trusted.crt $R/etc/verity.d/test.crt
}}
# waits up to 10 s for no dm devices and no loop devices with a backing file
wait_clean() {{
  i=0
  while [ $i -lt 50 ]; do
    dm=$(ls -d /sys/block/dm-* 2>/dev/null)
    lo=$(ls /sys/block/loop*/loop/backing_file 2>/dev/null)
    [ -z "$dm$lo" ] && return 0
    sleep 0.2; i=$((i+1))
  done
  echo "left over: dm=[$dm] loop=[$lo]"; dmsetup table; losetup -a; return 1
}}
export DM_DISABLE_UDEV=1

# --- activated: signed DDI through kernel dm-verity, merged ---------------
mkroot act
cp /sc/images/good.raw /sc/act/var/lib/extensions/{EXT}.raw
run_blob act-merge sysext --root=/sc/act --json=pretty merge
check act-file test -f /sc/act/usr/share/{EXT}/hello.txt
check act-content sh -c 'sha256sum /sc/act/usr/share/{EXT}/data.bin | grep -q ^{data_sha}'
check act-host-file test -f /sc/act/usr/share/host-marker
check act-dm-verity sh -c 'dmsetup table | grep -q " verity 1 "'
run_blob act-dmsetup dmsetup table
run_blob act-sysfs sh -c 'for d in /sys/block/dm-*; do echo "$d name=$(cat $d/dm/name) uuid=$(cat $d/dm/uuid) ro=$(cat $d/ro) slaves=$(ls $d/slaves | tr "\n" " ")"; done'
run_blob act-status sysext --root=/sc/act --json=pretty status
run_blob act-status-human sysext --root=/sc/act status
check act-status-mode sh -c 'sysext --root=/sc/act status | grep -q "kernel-verity+userspace-signature"'
run_blob act-keys cat /proc/keys
run_blob act-dmesg dmesg
run_blob act-unmerge sysext --root=/sc/act unmerge
check act-unmerged sh -c '! test -e /sc/act/usr/share/{EXT}'
check act-clean wait_clean

# --- sidecar: bare squashfs + .verity/.roothash/.roothash.p7s -------------
mkroot side
cp /sc/images/side.raw /sc/side/var/lib/extensions/{EXT}.raw
cp /sc/images/side.verity /sc/side/var/lib/extensions/{EXT}.verity
cp /sc/images/side.roothash /sc/side/var/lib/extensions/{EXT}.roothash
cp /sc/images/side.roothash.p7s /sc/side/var/lib/extensions/{EXT}.roothash.p7s
run_blob side-merge sysext --root=/sc/side --json=pretty merge
check side-content sh -c 'sha256sum /sc/side/usr/share/{EXT}/data.bin | grep -q ^{data_sha}'
check side-dm-verity sh -c 'dmsetup table | grep -q " verity 1 "'
run_blob side-dmsetup dmsetup table
run_blob side-status sysext --root=/sc/side --json=pretty status
run_blob side-unmerge sysext --root=/sc/side unmerge
check side-clean wait_clean

# --- erofs in a DDI ---------------------------------------------------------
mkroot ero
cp /sc/images/erofs.raw /sc/ero/var/lib/extensions/{EXT}.raw
run_blob ero-merge sysext --root=/sc/ero --json=pretty merge
check ero-content sh -c 'sha256sum /sc/ero/usr/share/{EXT}/data.bin | grep -q ^{data_sha}'
check ero-dm-verity sh -c 'dmsetup table | grep -q " verity 1 "'
check ero-fstype sh -c 'dmesg | grep -q "erofs: (device dm-[0-9]*): mounted"'
run_blob ero-dmesg sh -c 'dmesg | grep -i erofs'
run_blob ero-unmerge sysext --root=/sc/ero unmerge
check ero-clean wait_clean

# --- tamper: one flipped byte inside data.bin -----------------------------
mkroot tam
cp /sc/images/tampered.raw /sc/tam/var/lib/extensions/{EXT}.raw
dmesg -c >/dev/null
run_blob tam-merge sysext --root=/sc/tam --json=pretty merge
check tam-merged test -f /sc/tam/usr/lib/extension-release.d/extension-release.{EXT}
check tam-other-file-ok grep -q "hello from" /sc/tam/usr/share/{EXT}/hello.txt
check_fails tam-read cat /sc/tam/usr/share/{EXT}/data.bin
check tam-eio sh -c 'cat /sc/tam/usr/share/{EXT}/data.bin 2>&1 >/dev/null | grep -q "Input/output error"'
check tam-kernel-caught sh -c 'dmesg | grep -q "verity.*data block [0-9]* is corrupted"'
run_blob tam-dmesg dmesg
run_blob tam-unmerge sysext --root=/sc/tam unmerge
check tam-clean wait_clean
# the same image with the user-space backend: refused before mounting
run_blob tam-us-merge sysext --root=/sc/tam --verity=user-space --json=pretty merge
check tam-us-not-merged sh -c '! test -e /sc/tam/usr/share/{EXT}'
check tam-us-clean wait_clean

# --- untrusted signer ------------------------------------------------------
mkroot unt
cp /sc/images/untrusted.raw /sc/unt/var/lib/extensions/{EXT}.raw
run_blob unt-merge sysext --root=/sc/unt --json=pretty merge
check unt-not-merged sh -c '! test -e /sc/unt/usr/share/{EXT}'
check unt-no-dm sh -c '! ls -d /sys/block/dm-* 2>/dev/null'
check unt-no-mount sh -c '! grep -q " /sc/unt" /proc/self/mountinfo'
check unt-clean wait_clean

# --- unsigned (verity-only) DDI: kernel verity without a signature ---------
mkroot uns
cp /sc/images/unsigned.raw /sc/uns/var/lib/extensions/{EXT}.raw
run_blob uns-signed-merge sysext --root=/sc/uns --policy=signed --json=pretty merge
check uns-signed-refused sh -c '! test -e /sc/uns/usr/share/{EXT}'
run_blob uns-merge sysext --root=/sc/uns --policy=verity --json=pretty merge
check uns-content sh -c 'sha256sum /sc/uns/usr/share/{EXT}/data.bin | grep -q ^{data_sha}'
check uns-dm-verity sh -c 'dmsetup table | grep " verity 1 " | grep -qv root_hash_sig_key_desc'
run_blob uns-unmerge sysext --root=/sc/uns unmerge
check uns-clean wait_clean

# --- refused after mounting (extension-release for another OS) -----------
mkroot mis
cp /sc/images/mismatch.raw /sc/mis/var/lib/extensions/{EXT}.raw
run_blob mis-merge sysext --root=/sc/mis --json=pretty merge
check mis-not-merged sh -c '! test -e /sc/mis/usr/share/{EXT}'
check mis-no-mount sh -c '! grep -q " /sc/mis" /proc/self/mountinfo'
check mis-clean wait_clean

# --- refresh v1 -> v2 through kernel dm-verity ----------------------------
mkroot ref
cp /sc/images/good.raw /sc/ref/var/lib/extensions/{EXT}.raw
run_blob ref-merge sysext --root=/sc/ref --json=pretty merge
check ref-v1 grep -q "hello from {EXT} 1" /sc/ref/usr/share/{EXT}/hello.txt
cp /sc/images/v2.raw /sc/ref/var/lib/extensions/.{EXT}.raw.new
mv /sc/ref/var/lib/extensions/.{EXT}.raw.new /sc/ref/var/lib/extensions/{EXT}.raw
run_blob ref-refresh sysext --root=/sc/ref --json=pretty refresh
check ref-v2 grep -q "hello from {EXT} 2" /sc/ref/usr/share/{EXT}/hello.txt
check ref-v2-data sh -c 'sha256sum /sc/ref/usr/share/{EXT}/data.bin | grep -q ^{data_sha}'
run_blob ref-dmsetup dmsetup table
run_blob ref-status sysext --root=/sc/ref --json=pretty status
run_blob ref-unmerge sysext --root=/sc/ref unmerge
check ref-clean wait_clean

# --- network: the host's loopback server through qemu user networking -----
# (busybox-static's wget crashes with -q or -T here; plain works)
check net-fetch timeout 60 wget -O /tmp/probe {probe_url}
check net-content sh -c 'sha256sum /tmp/probe | grep -q ^{probe_sha}'

# --- update cycle v1 -> v2 from the host's feed, and health-check rollback --
if sysext update --help >/dev/null 2>&1; then
  result update-available PASS
  for U in upd rb; do
    mkroot $U
    R=/sc/$U
    mkdir -p $R/var/lib/extensions.d $R/etc/systemd $R/etc/sysupdate.{EXT}.d
    cp /sc/images/good.raw $R/var/lib/extensions.d/{EXT}_1.raw
    ln -s ../extensions.d/{EXT}_1.raw $R/var/lib/extensions/{EXT}.raw
    cp /sc/images/import-pubring.pgp $R/etc/systemd/import-pubring.pgp
    cp /sc/images/{EXT}.transfer $R/etc/sysupdate.{EXT}.d/{EXT}.transfer
    run_blob $U-merge sysext --root=$R merge
    check $U-v1-merged grep -q "hello from {EXT} 1" $R/usr/share/{EXT}/hello.txt
  done
  run_blob upd-update sysext --root=/sc/upd --json=pretty update --check 'grep -q "hello from {EXT} 2" /sc/upd/usr/share/{EXT}/hello.txt'
  check upd-v2 grep -q "hello from {EXT} 2" /sc/upd/usr/share/{EXT}/hello.txt
  check upd-link sh -c 'readlink /sc/upd/var/lib/extensions/{EXT}.raw | grep -q {EXT}_2.raw'
  check upd-dm-verity sh -c 'dmsetup table | grep -q " verity 1 "'
  run_blob upd-status sysext --root=/sc/upd --json=pretty status
  run_blob rb-update sysext --root=/sc/rb --json=pretty update --check false
  check rb-v1 grep -q "hello from {EXT} 1" /sc/rb/usr/share/{EXT}/hello.txt
  check rb-link sh -c 'readlink /sc/rb/var/lib/extensions/{EXT}.raw | grep -q {EXT}_1.raw'
  run_blob rb-status sysext --root=/sc/rb --json=pretty status
  run_blob upd-unmerge sysext --root=/sc/upd unmerge
  run_blob rb-unmerge sysext --root=/sc/rb unmerge
  check upd-clean wait_clean
else
  result update-available FAIL "sysext update does not exist yet"
fi
"#
    )
}

struct Suite {
    run: VmRun,
    boot_secs: f64,
    total_secs: f64,
}

fn build_and_boot() -> Suite {
    let t0 = Instant::now();
    let kernel = Kernel::find();
    let dir = tempfile::Builder::new()
        .prefix("vm-suite")
        .tempdir()
        .unwrap();
    let d = dir.path();

    // Images.
    let trusted = key(d, "trusted");
    let untrusted = key(d, "untrusted");
    // The DDIs as `bakery build --format ddi` makes them.
    let good = bakery_ddi(
        d,
        "1",
        "debian",
        Some(&trusted.key_path),
        &d.join("good.raw"),
    );
    let v2 = bakery_ddi(d, "2", "debian", Some(&trusted.key_path), &d.join("v2.raw"));
    let mismatch = bakery_ddi(
        d,
        "1",
        "fedora",
        Some(&trusted.key_path),
        &d.join("mismatch.raw"),
    );
    let bad_signer = bakery_ddi(
        d,
        "1",
        "debian",
        Some(&untrusted.key_path),
        &d.join("untrusted.raw"),
    );
    let unsigned = bakery_ddi(d, "1", "debian", None, &d.join("unsigned.raw"));
    let tampered = tamper(&good);
    // Other forms: erofs in a DDI, squashfs with sidecar files.
    let ero = ddi(&erofs(d, "1", "debian"), &d.join("erofs.raw"), &trusted.key);
    let side = d.join("side.raw");
    fs::copy(squashfs(d, "1", "debian"), &side).unwrap();
    signing::sidecar::write_sidecar(&side, Some(&trusted.key), None).expect("write_sidecar");
    let file = |n: &str| fs::read(d.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));

    // Loopback server: the network probe and the update feed.
    let server = Upstream::start();
    let probe: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    server.insert("/probe.bin", probe.clone());
    let guest_base = format!("http://10.0.2.2:{}", server.addr().port());
    let guest_url = format!("{guest_base}/probe.bin");
    let (transfer, pubring) = feed(&server, &guest_base, &file("good.raw"), &file("v2.raw"));

    let files = vec![
        ("good.raw".to_string(), good),
        ("tampered.raw".to_string(), tampered),
        ("untrusted.raw".to_string(), bad_signer),
        ("v2.raw".to_string(), v2),
        ("mismatch.raw".to_string(), mismatch),
        ("erofs.raw".to_string(), ero),
        ("unsigned.raw".to_string(), unsigned),
        ("side.raw".to_string(), file("side.raw")),
        ("side.verity".to_string(), file("side.verity")),
        ("side.roothash".to_string(), file("side.roothash")),
        ("side.roothash.p7s".to_string(), file("side.roothash.p7s")),
        (
            "trusted.crt".to_string(),
            fs::read(&trusted.cert_path).unwrap(),
        ),
        ("import-pubring.pgp".to_string(), pubring),
        (format!("{EXT}.transfer"), transfer.into_bytes()),
    ];
    let disk = d.join("images.tar");
    tar_disk(&disk, &files);

    // Initramfs.
    let sysext = integration_tests::bin("merge-runtime", "sysext");
    let dmsetup = ["/usr/sbin/dmsetup", "/sbin/dmsetup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("dmsetup is not installed; install the Debian package dmsetup"));
    let mut init = Initramfs::new();
    init.add_busybox()
        .add_modules(&kernel, MODULES)
        .add_program("usr/bin/sysext", &sysext, true)
        .add_program("usr/sbin/dmsetup", dmsetup, false)
        .set_init(
            true,
            &scenario(&guest_url, &sha256_hex(&probe), &sha256_hex(&data_bin())),
        );
    let initrd = d.join("initrd.cpio");
    init.write(&initrd);

    let mut vm = Vm::new(kernel, initrd);
    vm.disks.push(disk);
    vm.network = true;
    let run = vm.run();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-console.log");
    let _ = fs::write(&log, &run.console);
    eprintln!("VM console log: {}", log.display());
    let boot_secs = run.elapsed.as_secs_f64();
    drop(server);
    let total_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "VM suite: kernel boot + scenarios {boot_secs:.1} s, total with image and initramfs building {total_secs:.1} s"
    );
    Suite {
        run,
        boot_secs,
        total_secs,
    }
}

fn suite() -> &'static Suite {
    static SUITE: Mutex<Option<Result<&'static Suite, String>>> = Mutex::new(None);
    let mut g = SUITE.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        let r = std::panic::catch_unwind(build_and_boot)
            .map(|s| &*Box::leak(Box::new(s)))
            .map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "building or booting the VM panicked".into())
            });
        *g = Some(r);
    }
    match g.as_ref() {
        Some(Ok(s)) => s,
        Some(Err(e)) => panic!("VM suite setup failed: {e}"),
        None => unreachable!(),
    }
}

fn json(run: &VmRun, blob: &str) -> serde_json::Value {
    let text = run.blob_text(blob);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{blob} is not JSON ({e}):\n{text}\nstderr:\n{}\n--- console tail ---\n{}",
            run.blob_text(&format!("{blob}.err")),
            run.tail(40)
        )
    })
}

/// The per-image entries of a merge report (`{"images": [...]}`) or a
/// status report (an array of hierarchies, each with `images`).
fn images(v: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    if let Some(a) = v["images"].as_array() {
        out.extend(a.iter().cloned());
    }
    let hierarchies = v.as_array().or_else(|| v["hierarchies"].as_array());
    for h in hierarchies.into_iter().flatten() {
        if let Some(a) = h["images"].as_array() {
            out.extend(a.iter().cloned());
        }
    }
    out
}

#[test]
fn vm_boots_debian_kernel_with_device_mapper() {
    let s = suite();
    let r = &s.run;
    assert!(!r.timed_out, "the VM timed out\n{}", r.tail(80));
    assert!(r.finished, "the scenario did not finish\n{}", r.tail(80));
    assert!(
        !r.results.contains_key("insmod") && !r.results.contains_key("network-setup"),
        "{:?}\n{}",
        r.results,
        r.tail(80)
    );
    for c in ["disk", "dm-control", "verity-target"] {
        r.assert_pass(c);
    }
    eprintln!(
        "VM wall time: {:.1} s in qemu, {:.1} s with setup",
        s.boot_secs, s.total_secs
    );
}

#[test]
fn signed_ddi_activated_through_kernel_dm_verity_and_merged() {
    let r = &suite().run;
    for c in [
        "act-status-mode",
        "act-file",
        "act-content",
        "act-host-file",
        "act-dm-verity",
        "act-unmerged",
        "act-clean",
    ] {
        r.assert_pass(c);
    }
    // dmsetup (the real tool) shows our verity target, read-only, sha256.
    let table = r.blob_text("act-dmsetup");
    let line = table
        .lines()
        .find(|l| l.contains(" verity 1 "))
        .unwrap_or_else(|| panic!("no verity target in dmsetup table:\n{table}"));
    assert!(
        line.contains(" 4096 4096 ") && line.contains(" sha256 "),
        "{line}"
    );
    let sysfs = r.blob_text("act-sysfs");
    assert!(sysfs.contains("ro=1") && sysfs.contains("loop"), "{sysfs}");
    // The runtime says how it verified: kernel verity; the kernel refused
    // our self-signed certificate, so the signature was checked in user space.
    let status = json(r, "act-status");
    let imgs = images(&status);
    let img = imgs
        .iter()
        .find(|i| i["name"] == EXT)
        .unwrap_or_else(|| panic!("no {EXT} in status: {status:#}"));
    assert_eq!(
        img["verification"], "kernel-verity+userspace-signature",
        "{status:#}"
    );
    let merge = json(r, "act-merge");
    assert!(
        images(&merge)
            .iter()
            .any(|i| i["name"] == EXT && i["status"] == "merged"),
        "{merge:#}"
    );
    // The signature was handed to the kernel (root_hash_sig_key_desc) and
    // the kernel checked it against its keyring before we fell back.
    let dmesg = r.blob_text("act-dmesg");
    assert!(
        dmesg.contains("verity: Root hash verification failed"),
        "the kernel should have been asked to check the signature:\n{dmesg}"
    );
    let keys = r.blob_text("act-keys");
    assert!(keys.contains(".secondary_trusted_keys"), "{keys}");
    assert!(
        !keys.contains("sysext-forge:"),
        "the signature key must be gone after activation:\n{keys}"
    );
}

#[test]
fn sidecar_image_activated_through_kernel_dm_verity() {
    let r = &suite().run;
    for c in ["side-content", "side-dm-verity", "side-clean"] {
        r.assert_pass(c);
    }
    let status = json(r, "side-status");
    assert!(
        images(&status)
            .iter()
            .any(|i| i["name"] == EXT && i["verification"] == "kernel-verity+userspace-signature"),
        "{status:#}"
    );
}

#[test]
fn tampered_data_byte_fails_reading_with_eio_from_dm_verity() {
    let r = &suite().run;
    // No user-space scan before mounting in kernel mode: the image merges…
    let merge = json(r, "tam-merge");
    assert!(
        images(&merge).iter().any(|i| i["name"] == EXT
            && i["status"] == "merged"
            && i["verification"] == "kernel-verity+userspace-signature"),
        "{merge:#}"
    );
    // …other files read fine, the tampered file gives EIO, and the kernel
    // log says dm-verity found the corrupted block.
    for c in [
        "tam-merged",
        "tam-other-file-ok",
        "tam-read",
        "tam-eio",
        "tam-kernel-caught",
        "tam-clean",
    ] {
        r.assert_pass(c);
    }
    // Contrast: the user-space backend hashes everything before mounting
    // and refuses the same image, so in kernel mode it was the kernel.
    for c in ["tam-us-not-merged", "tam-us-clean"] {
        r.assert_pass(c);
    }
    let us = json(r, "tam-us-merge");
    assert!(
        images(&us)
            .iter()
            .any(|i| i["name"] == EXT && i["status"] == "refused" && i["stage"] == "verity"),
        "{us:#}"
    );
    let dmesg = r.blob_text("tam-dmesg");
    assert!(
        dmesg
            .lines()
            .any(|l| l.contains("verity") && l.contains("is corrupted")),
        "{dmesg}"
    );
}

#[test]
fn untrusted_signer_refused_before_mounting() {
    let r = &suite().run;
    for c in ["unt-not-merged", "unt-no-dm", "unt-no-mount", "unt-clean"] {
        r.assert_pass(c);
    }
    let merge = json(r, "unt-merge");
    let imgs = images(&merge);
    let img = imgs
        .iter()
        .find(|i| i["name"] == EXT)
        .unwrap_or_else(|| panic!("{merge:#}"));
    assert_eq!(img["status"], "refused", "{merge:#}");
    assert_eq!(img["stage"], "signature", "{merge:#}");
}

#[test]
fn guest_reaches_host_loopback_server() {
    let r = &suite().run;
    r.assert_pass("net-fetch");
    r.assert_pass("net-content");
}

#[test]
fn update_cycle_v1_to_v2_and_health_check_rollback() {
    let r = &suite().run;
    r.assert_pass("update-available");
    for c in [
        "upd-v1-merged",
        "rb-v1-merged",
        "upd-v2",
        "upd-link",
        "upd-dm-verity",
        "rb-v1",
        "rb-link",
        "upd-clean",
    ] {
        r.assert_pass(c);
    }
    // v1 -> v2 from the feed (manifest signature checked), health check passed.
    let up = json(r, "upd-update");
    let c = &up["components"][0];
    assert_eq!(c["component"], EXT, "{up:#}");
    assert_eq!(c["outcome"], "installed", "{up:#}");
    assert_eq!(
        (c["current_before"].as_str(), c["current_after"].as_str()),
        (Some("1"), Some("2")),
        "{up:#}"
    );
    assert_eq!(c["manifests"][0]["verified"], true, "{up:#}");
    // The failing health check took the other node back to v1.
    let rb = json(r, "rb-update");
    let c = &rb["components"][0];
    assert_eq!(c["outcome"], "rolled-back", "{rb:#}");
    assert_eq!(
        (c["version"].as_str(), c["current_after"].as_str()),
        (Some("2"), Some("1")),
        "{rb:#}"
    );
    // Both merged through kernel dm-verity.
    for blob in ["upd-status", "rb-status"] {
        let status = json(r, blob);
        assert!(
            images(&status)
                .iter()
                .any(|i| i["name"] == EXT
                    && i["verification"] == "kernel-verity+userspace-signature"),
            "{blob}: {status:#}"
        );
    }
}

#[test]
fn image_refused_after_activation_leaves_no_device_behind() {
    let r = &suite().run;
    for c in ["mis-not-merged", "mis-no-mount", "mis-clean"] {
        r.assert_pass(c);
    }
    let merge = json(r, "mis-merge");
    assert!(
        images(&merge)
            .iter()
            .any(|i| i["name"] == EXT && i["status"] == "refused" && i["stage"] == "compatibility"),
        "{merge:#}"
    );
}

#[test]
fn refresh_from_v1_to_v2_through_kernel_dm_verity() {
    let r = &suite().run;
    for c in ["ref-v1", "ref-v2", "ref-v2-data", "ref-clean"] {
        r.assert_pass(c);
    }
    let status = json(r, "ref-status");
    let imgs = images(&status);
    assert!(
        imgs.iter()
            .any(|i| i["name"] == EXT && i["verification"] == "kernel-verity+userspace-signature"),
        "{status:#}"
    );
    // The live table is v2's root hash.
    let v2_root = imgs
        .iter()
        .find_map(|i| i["root_hash"].as_str())
        .unwrap_or_else(|| panic!("{status:#}"))
        .to_string();
    let table = r.blob_text("ref-dmsetup");
    assert!(
        table.contains(&v2_root),
        "v2 root hash {v2_root} not in:\n{table}"
    );
}

#[test]
fn erofs_ddi_activated_through_kernel_dm_verity() {
    let r = &suite().run;
    for c in ["ero-content", "ero-dm-verity", "ero-fstype", "ero-clean"] {
        r.assert_pass(c);
    }
    let merge = json(r, "ero-merge");
    assert!(
        images(&merge).iter().any(|i| i["name"] == EXT
            && i["status"] == "merged"
            && i["verification"] == "kernel-verity+userspace-signature"),
        "{merge:#}"
    );
}

#[test]
fn unsigned_ddi_uses_kernel_verity_without_signature() {
    let r = &suite().run;
    for c in [
        "uns-signed-refused",
        "uns-content",
        "uns-dm-verity",
        "uns-clean",
    ] {
        r.assert_pass(c);
    }
    let refused = json(r, "uns-signed-merge");
    assert!(
        images(&refused)
            .iter()
            .any(|i| i["name"] == EXT && i["status"] == "refused" && i["stage"] == "policy"),
        "{refused:#}"
    );
    let merged = json(r, "uns-merge");
    assert!(
        images(&merged).iter().any(|i| i["name"] == EXT
            && i["status"] == "merged"
            && i["verification"] == "kernel-verity"),
        "{merged:#}"
    );
}
