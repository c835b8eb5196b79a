//! A harness that boots a real Linux kernel — Debian's `linux-image-amd64`
//! from `/boot` — under `qemu-system-x86_64 -accel tcg` with an initramfs
//! built here, and reads results from its serial console.
//!
//! What it owns:
//! - finding the kernel and its modules ([`Kernel::find`]);
//! - the initramfs ([`Initramfs`]): busybox (static) and its applet links,
//!   kernel modules with their dependencies from `modules.dep` (compressed
//!   `.ko.xz`/`.ko.zst`/`.ko.gz` are unpacked here, so busybox `insmod`
//!   can load them), dynamically linked programs made self-contained (their
//!   `ldd` libraries and the dynamic loader copied along), written as an
//!   uncompressed `newc` cpio archive;
//! - a data disk ([`tar_disk`]): a plain tar archive used as a raw virtio
//!   disk, unpacked in the guest with `tar -xf /dev/vda`;
//! - running the VM ([`Vm::run`]) with a timeout and parsing what the guest
//!   prints: `RESULT <name> PASS|FAIL <detail>` lines, base64 blobs framed
//!   by `BEGIN-BLOB <name>` / `END-BLOB <name>`, and `VM-END` when the
//!   scenario finished (anything else is kept as the console log).
//!
//! The guest side is a shell library ([`GUEST_LIB`]) and an init script
//! ([`Initramfs::set_init`]) that mounts /proc, /sys and devtmpfs, loads the
//! modules, optionally configures qemu user networking (the host's
//! 127.0.0.1 is 10.0.2.2 from the guest), runs the scenario and powers off.
//! KVM is not used: TCG only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The kernel to boot and where its modules are.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
}

fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-', '+', '~'])
        .map(|p| (p.parse::<u64>().unwrap_or(0), p.to_string()))
        .collect()
}

impl Kernel {
    /// The newest `/boot/vmlinuz-VERSION` that has `/lib/modules/VERSION/modules.dep`.
    pub fn find() -> Kernel {
        Kernel::find_in(Path::new("/boot"), Path::new("/lib/modules")).unwrap_or_else(|e| {
            panic!("{e}; install the Debian package linux-image-amd64 (./scripts/test.sh does)")
        })
    }

    pub fn find_in(boot: &Path, modules: &Path) -> Result<Kernel, String> {
        let mut found = Vec::new();
        let rd = fs::read_dir(boot).map_err(|e| format!("cannot read {}: {e}", boot.display()))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            let modules_dir = modules.join(version);
            if modules_dir.join("modules.dep").is_file() {
                found.push(Kernel {
                    version: version.to_string(),
                    vmlinuz: e.path(),
                    modules_dir,
                });
            }
        }
        found.sort_by_key(|k| version_key(&k.version));
        found.pop().ok_or_else(|| {
            format!(
                "no kernel in {} with modules in {}/VERSION/modules.dep",
                boot.display(),
                modules.display()
            )
        })
    }

    /// The module index of this kernel (`modules.dep`, `modules.builtin`,
    /// `modules.softdep`, `modules.alias`).
    pub fn module_index(&self) -> Result<ModuleIndex, String> {
        let read = |n: &str| fs::read_to_string(self.modules_dir.join(n));
        let dep_path = self.modules_dir.join("modules.dep");
        let dep =
            read("modules.dep").map_err(|e| format!("reading {}: {e}", dep_path.display()))?;
        ModuleIndex::parse(
            &dep,
            &read("modules.builtin").unwrap_or_default(),
            &read("modules.softdep").unwrap_or_default(),
            &read("modules.alias").unwrap_or_default(),
        )
    }

    /// The modules needed to load `names`, dependencies first.
    pub fn resolve_modules(&self, names: &[&str]) -> Result<Vec<ModuleLoad>, String> {
        self.module_index()?.resolve(names)
    }
}

/// `dm-mod` → `dm_mod`; `kernel/drivers/md/dm-mod.ko.xz` → `dm_mod`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    /// Path relative to the modules directory, as in `modules.dep`.
    pub path: String,
    /// A soft dependency (`modules.softdep` `pre:`, matched through
    /// `modules.alias`): loading it may fail (e.g. a CPU-specific variant)
    /// as long as another one provides the feature.
    pub optional: bool,
}

/// What `modprobe` knows about a kernel's modules.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    deps: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
    softdeps: BTreeMap<String, Vec<String>>,
    aliases: BTreeMap<String, Vec<String>>,
}

impl ModuleIndex {
    /// Parses the index files' text.
    pub fn parse(
        modules_dep: &str,
        builtin: &str,
        softdep: &str,
        alias: &str,
    ) -> Result<ModuleIndex, String> {
        let mut me = ModuleIndex::default();
        for (i, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (path, rest) = line
                .split_once(':')
                .ok_or_else(|| format!("modules.dep line {}: no ':' in {line:?}", i + 1))?;
            let d = rest.split_whitespace().map(str::to_string).collect();
            me.deps.insert(module_name(path), (path.to_string(), d));
        }
        me.builtin = builtin.lines().map(module_name).collect();
        for line in softdep.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(m) = w.next() else { continue };
            let mut pre = false;
            for t in w {
                match t {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    n if pre => me
                        .softdeps
                        .entry(module_name(m))
                        .or_default()
                        .push(n.to_string()),
                    _ => {}
                }
            }
        }
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (w.next(), w.next(), w.next()) {
                me.aliases
                    .entry(a.to_string())
                    .or_default()
                    .push(module_name(m));
            }
        }
        Ok(me)
    }

    /// Modules that `name` (a module name or an exact alias) stands for.
    fn lookup(&self, name: &str) -> Vec<String> {
        let m = module_name(name);
        if self.deps.contains_key(&m) || self.builtin.contains(&m) {
            return vec![m];
        }
        self.aliases.get(name).cloned().unwrap_or_default()
    }

    /// The module files to load for `names`, dependencies (soft ones too)
    /// first. Built-in modules are skipped.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<ModuleLoad>, String> {
        let mut order: Vec<ModuleLoad> = Vec::new();
        let mut seen = BTreeSet::new();
        for n in names {
            self.visit(
                &module_name(n),
                false,
                &mut seen,
                &mut order,
                &mut Vec::new(),
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        optional: bool,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<ModuleLoad>,
        stack: &mut Vec<String>,
    ) -> Result<(), String> {
        if seen.contains(name) {
            if !optional {
                // Required after all: make an earlier soft load required.
                if let Some((path, _)) = self.deps.get(name) {
                    for l in order.iter_mut().filter(|l| &l.path == path) {
                        l.optional = false;
                    }
                }
            }
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(format!(
                "module dependency cycle: {} -> {name}",
                stack.join(" -> ")
            ));
        }
        let Some((path, ds)) = self.deps.get(name) else {
            if self.builtin.contains(name) {
                seen.insert(name.to_string());
                return Ok(());
            }
            if optional {
                return Ok(());
            }
            return Err(format!(
                "kernel module {name} is neither in modules.dep nor built in"
            ));
        };
        stack.push(name.to_string());
        if let Some(pre) = self.softdeps.get(name) {
            for p in pre {
                for m in self.lookup(p) {
                    self.visit(&m, true, seen, order, stack)?;
                }
            }
        }
        // modules.dep lists the full closure; the last entry loads first.
        for d in ds.iter().rev() {
            self.visit(&module_name(d), optional, seen, order, stack)?;
        }
        stack.pop();
        seen.insert(name.to_string());
        order.push(ModuleLoad {
            path: path.clone(),
            optional,
        });
        Ok(())
    }
}

/// Resolves `names` against the text of `modules.dep` and
/// `modules.builtin` only: module paths in load order.
pub fn resolve_modules(
    modules_dep: &str,
    modules_builtin: &str,
    names: &[&str],
) -> Result<Vec<String>, String> {
    Ok(ModuleIndex::parse(modules_dep, modules_builtin, "", "")?
        .resolve(names)?
        .into_iter()
        .map(|l| l.path)
        .collect())
}

/// Reads a module file, decompressing `.xz`, `.zst` and `.gz`.
pub fn read_module(path: &Path) -> Vec<u8> {
    let raw = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        liblzma::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("cannot unpack {}: {e}", path.display()));
    } else if name.ends_with(".zst") {
        out = zstd::decode_all(&raw[..])
            .unwrap_or_else(|e| panic!("cannot unpack {}: {e}", path.display()));
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("cannot unpack {}: {e}", path.display()));
    } else {
        out = raw;
    }
    out
}

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An initramfs being assembled: archive paths (without a leading `/`) to
/// entries. Parent directories are added automatically.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
    /// Archive paths of the modules to load, in order, and whether a load
    /// may fail.
    modules: Vec<(String, bool)>,
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// The shell library every guest script can source (`. /lib/vmtest.sh`).
pub const GUEST_LIB: &str = r#"# vmtest guest library
result() { # NAME PASS|FAIL DETAIL...
  n=$1; s=$2; shift 2
  echo "RESULT $n $s $(echo "$*" | tr '\n' ' ' | head -c 2000)"
}
# check NAME CMD...: runs CMD, RESULT PASS if it succeeds, FAIL with its output.
check() {
  n=$1; shift
  if "$@" >/tmp/check.out 2>&1; then result "$n" PASS; else result "$n" FAIL "rc=$? $(head -c 1500 /tmp/check.out)"; fi
}
# check_fails NAME CMD...: PASS if CMD fails.
check_fails() {
  n=$1; shift
  if "$@" >/tmp/check.out 2>&1; then result "$n" FAIL "unexpectedly succeeded: $(head -c 1500 /tmp/check.out)"; else result "$n" PASS "rc=$? $(head -c 500 /tmp/check.out)"; fi
}
# blob NAME FILE: sends FILE to the host, base64 encoded.
blob() {
  echo "BEGIN-BLOB $1"; base64 < "$2"; echo "END-BLOB $1"
}
# run_blob NAME CMD...: runs CMD; sends its stdout as blob NAME, its
# stderr and exit code as blob NAME.err.
run_blob() {
  n=$1; shift
  "$@" >/tmp/run.out 2>/tmp/run.err; rc=$?
  echo "rc=$rc" >> /tmp/run.err
  blob "$n" /tmp/run.out
  blob "$n.err" /tmp/run.err
  return $rc
}
"#;

impl Initramfs {
    pub fn new() -> Initramfs {
        let mut me = Initramfs::default();
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "etc", "lib",
        ] {
            me.dir(d, 0o755);
        }
        me.entries.insert("tmp".into(), Entry::Dir { mode: 0o1777 });
        me.entries.insert(
            "dev/console".into(),
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        me.entries.insert(
            "dev/null".into(),
            Entry::CharDev {
                mode: 0o666,
                major: 1,
                minor: 3,
            },
        );
        me.file("lib/vmtest.sh", 0o644, GUEST_LIB.as_bytes().to_vec());
        me.file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        );
        me.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
        me.file(
            "etc/hosts",
            0o644,
            b"127.0.0.1 localhost\n10.0.2.2 host\n".to_vec(),
        );
        me
    }

    fn parents(&mut self, path: &str) {
        let mut p = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(part);
            self.entries
                .entry(p.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let p = clean(path);
        self.parents(&p);
        self.entries.insert(p, Entry::Dir { mode });
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        let p = clean(path);
        self.parents(&p);
        self.entries.insert(
            p,
            Entry::File {
                mode,
                data: data.into(),
            },
        );
        self
    }

    /// Copies host file `src` (symlinks followed) to `path`.
    pub fn copy(&mut self, path: &str, src: &Path, mode: u32) -> &mut Self {
        let data = fs::read(src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
        self.file(path, mode, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let p = clean(path);
        self.parents(&p);
        self.entries.insert(
            p,
            Entry::Symlink {
                target: target.into(),
            },
        );
        self
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&clean(path))
    }

    /// Static busybox as `/bin/busybox` with a link for each applet.
    pub fn add_busybox(&mut self) -> &mut Self {
        let bb = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("busybox is not installed; install the Debian package busybox-static")
            });
        let ldd = Command::new("ldd").arg(bb).output();
        if let Ok(o) = &ldd {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                !text.contains("=>"),
                "{} is dynamically linked; install the Debian package busybox-static",
                bb.display()
            );
        }
        self.copy("bin/busybox", bb, 0o755);
        let list = Command::new(bb)
            .arg("--list-full")
            .output()
            .expect("cannot run busybox --list-full");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "bin/busybox" || applet == "linuxrc" {
                continue;
            }
            self.symlink(applet, "/bin/busybox");
        }
        self
    }

    /// Adds kernel modules `names` with their dependencies (decompressed)
    /// under `/lib/modules/VERSION/` and records the load order for the
    /// init script.
    pub fn add_modules(&mut self, kernel: &Kernel, names: &[&str]) -> &mut Self {
        let order = kernel
            .resolve_modules(names)
            .unwrap_or_else(|e| panic!("{e} (kernel {})", kernel.version));
        for load in order {
            let rel = &load.path;
            let data = read_module(&kernel.modules_dir.join(rel));
            let plain = match rel.find(".ko") {
                Some(i) => format!("{}.ko", &rel[..i]),
                None => rel.clone(),
            };
            let dest = format!("lib/modules/{}/{plain}", kernel.version);
            match self.modules.iter_mut().find(|(m, _)| *m == dest) {
                Some((_, optional)) => *optional &= load.optional,
                None => {
                    self.file(&dest, 0o644, data);
                    self.modules.push((dest, load.optional));
                }
            }
        }
        self
    }

    /// Shell lines that load the added modules in order.
    pub fn insmod_script(&self) -> String {
        self.modules
            .iter()
            .map(|(m, optional)| {
                if *optional {
                    format!(
                        "insmod /{m} 2>/dev/null || echo \"optional module {m} did not load\"\n"
                    )
                } else {
                    format!("insmod /{m} || echo \"RESULT insmod FAIL {m}\"\n")
                }
            })
            .collect()
    }

    /// Copies program `src` to `dest` together with every library `ldd`
    /// lists and the dynamic loader, at their absolute paths, so that it
    /// runs in the guest. With `strip`, debug info is removed from the copy
    /// (`strip --strip-debug`; the host file is not touched).
    pub fn add_program(&mut self, dest: &str, src: &Path, strip: bool) -> &mut Self {
        let data = if strip {
            let tmp = tempfile::NamedTempFile::new().expect("temp file");
            let out = Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(tmp.path())
                .arg(src)
                .output();
            match out {
                Ok(o) if o.status.success() => fs::read(tmp.path()).expect("stripped copy"),
                _ => fs::read(src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display())),
            }
        } else {
            fs::read(src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()))
        };
        self.file(dest, 0o755, data);
        for lib in shared_libraries(src) {
            let p = lib.to_string_lossy().into_owned();
            if self.get(&p).is_none() {
                self.copy(&p, &lib, 0o755);
            }
        }
        self
    }

    /// Sets `/init`: mounts, modules, optional network, then `scenario`
    /// (a shell script with [`GUEST_LIB`] sourced), then `VM-END` and
    /// power-off.
    pub fn set_init(&mut self, network: bool, scenario: &str) -> &mut Self {
        let net = if network {
            "ip link set lo up\n\
             for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done\n\
             ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
             || echo 'RESULT network-setup FAIL no eth0'\n"
        } else {
            ""
        };
        let init = format!(
            "#!/bin/sh\n\
             export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             mkdir -p /dev/pts /dev/shm /run /tmp\n\
             mount -t tmpfs -o mode=0755 tmpfs /run\n\
             echo 'VM-START'\n\
             {insmod}\
             {net}\
             . /lib/vmtest.sh\n\
             sh /scenario.sh 2>&1\n\
             echo \"VM-END rc=$?\"\n\
             sync\n\
             poweroff -f\n",
            insmod = self.insmod_script(),
        );
        self.file("init", 0o755, init.into_bytes());
        self.file(
            "scenario.sh",
            0o755,
            format!(". /lib/vmtest.sh\n{scenario}").into_bytes(),
        );
        self
    }

    /// The archive as `newc` cpio bytes (deterministic: sorted, mtime 0).
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, e)) in (1u32..).zip(&self.entries) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir { mode } => (0o040000 | mode, &[], (0, 0)),
                Entry::File { mode, data } => (0o100000 | mode, data, (0, 0)),
                Entry::Symlink { target } => (0o120777, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => (0o020000 | mode, &[], (*major, *minor)),
            };
            newc_entry(
                &mut out,
                ino,
                mode,
                if matches!(e, Entry::Dir { .. }) { 2 } else { 1 },
                rdev,
                path,
                data,
            );
        }
        newc_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out.resize(out.len().next_multiple_of(512), 0);
        out
    }

    /// Writes the archive to `path`.
    pub fn write(&self, path: &Path) {
        fs::write(path, self.to_newc())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn newc_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        namesize as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// The shared libraries (and the dynamic loader) `ldd` reports for `bin`;
/// empty for a static program.
pub fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ldd (package libc-bin): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            panic!("{}: ldd cannot find a library: {line}", bin.display());
        }
    }
    libs
}

/// Writes `files` (archive name → bytes) as a tar archive padded to a
/// multiple of 1 MiB, to be attached as a raw disk.
pub fn tar_disk(path: &Path, files: &[(String, Vec<u8>)]) {
    let f =
        fs::File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let mut b = tar::Builder::new(f);
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..])
            .unwrap_or_else(|e| panic!("cannot add {name} to {}: {e}", path.display()));
    }
    let mut f = b.into_inner().expect("finishing the tar disk");
    let len = f.metadata().expect("stat tar disk").len();
    let padded = len.div_ceil(1 << 20) * (1 << 20);
    f.set_len(padded.max(1 << 20))
        .expect("padding the tar disk");
    f.flush().ok();
}

/// One `RESULT` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub pass: bool,
    pub detail: String,
}

/// What a VM run printed.
#[derive(Debug, Clone, Default)]
pub struct VmRun {
    /// The whole console output (carriage returns removed).
    pub console: String,
    /// By name; a name reported twice keeps the first FAIL.
    pub results: BTreeMap<String, TestResult>,
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// The scenario got to its end (`VM-END`).
    pub finished: bool,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl VmRun {
    /// Parses console output.
    pub fn parse(console: &str) -> VmRun {
        let mut run = VmRun {
            console: console.replace('\r', ""),
            ..VmRun::default()
        };
        let mut blob: Option<(String, String)> = None;
        for line in run.console.lines() {
            if let Some((name, text)) = &mut blob {
                if line.trim() == format!("END-BLOB {name}") {
                    let data = base64_decode(text);
                    run.blobs.insert(name.clone(), data);
                    blob = None;
                } else {
                    text.push_str(line.trim());
                }
                continue;
            }
            // Results may follow other output on the same line.
            if let Some(i) = line.find("RESULT ") {
                let mut it = line[i + 7..].splitn(3, ' ');
                let name = it.next().unwrap_or("").to_string();
                let status = it.next().unwrap_or("");
                let detail = it.next().unwrap_or("").trim().to_string();
                let r = TestResult {
                    pass: status == "PASS",
                    detail,
                };
                match run.results.get(&name) {
                    Some(old) if !old.pass => {}
                    _ => {
                        run.results.insert(name, r);
                    }
                }
            } else if let Some(name) = line.trim().strip_prefix("BEGIN-BLOB ") {
                blob = Some((name.to_string(), String::new()));
            } else if line.contains("VM-END") {
                run.finished = true;
            }
        }
        run
    }

    /// The last `n` lines of the console, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A blob as text (lossy), or a note that it is missing.
    pub fn blob_text(&self, name: &str) -> String {
        self.blobs
            .get(name)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| format!("<no blob {name}>"))
    }

    /// Panics unless result `name` is present and PASS.
    pub fn assert_pass(&self, name: &str) {
        match self.results.get(name) {
            Some(r) if r.pass => {}
            Some(r) => panic!("VM check {name} FAILED: {}\n--- console tail ---\n{}", r.detail, self.tail(60)),
            None => panic!(
                "VM check {name} did not report (finished={}, timed out={})\n--- console tail ---\n{}",
                self.finished,
                self.timed_out,
                self.tail(80)
            ),
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let Some(v) = T.iter().position(|&t| t == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A VM to boot.
#[derive(Debug, Clone)]
pub struct Vm {
    pub kernel: Kernel,
    pub initrd: PathBuf,
    /// Raw disk images, attached read-only as virtio disks vda, vdb, …
    pub disks: Vec<PathBuf>,
    /// qemu user networking (guest 10.0.2.15, host loopback at 10.0.2.2).
    pub network: bool,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// Extra kernel command line.
    pub append: String,
}

impl Vm {
    pub fn new(kernel: Kernel, initrd: PathBuf) -> Vm {
        Vm {
            kernel,
            initrd,
            disks: Vec::new(),
            network: false,
            memory_mb: 1024,
            timeout: Duration::from_secs(300),
            append: String::new(),
        }
    }

    /// The qemu command line.
    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-accel",
            "tcg",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .args(["-m", &self.memory_mb.to_string()])
        .arg("-kernel")
        .arg(&self.kernel.vmlinuz)
        .arg("-initrd")
        .arg(&self.initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 loglevel=1 panic=-1 {}", self.append).trim_end());
        for d in &self.disks {
            c.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                d.display()
            ));
        }
        if self.network {
            c.args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ]);
        }
        c
    }

    /// Boots, waits for power-off or the timeout, and parses the console.
    pub fn run(&self) -> VmRun {
        crate::require_tool("qemu-system-x86_64", "qemu-system-x86");
        let start = Instant::now();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        let mut stdout = child.stdout.take().expect("qemu stdout");
        let mut stderr = child.stderr.take().expect("qemu stderr");
        let out_t = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = stdout.read_to_end(&mut b);
            b
        });
        let err_t = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = stderr.read_to_end(&mut b);
            b
        });
        let mut timed_out = false;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    timed_out = true;
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("waiting for qemu: {e}"),
            }
        }
        let out = out_t.join().unwrap_or_default();
        let err = err_t.join().unwrap_or_default();
        let mut console = String::from_utf8_lossy(&out).into_owned();
        if !err.is_empty() {
            console.push_str("\n--- qemu stderr ---\n");
            console.push_str(&String::from_utf8_lossy(&err));
        }
        let mut run = VmRun::parse(&console);
        run.timed_out = timed_out;
        run.elapsed = start.elapsed();
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dependencies_first() {
        let dep = "kernel/drivers/md/dm-mod.ko:\n\
                   kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko\n\
                   kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko\n\
                   kernel/lib/reed_solomon/reed_solomon.ko:\n";
        let order = resolve_modules(
            dep,
            "kernel/fs/overlayfs/overlay.ko\n",
            &["dm_verity", "overlay", "dm-mod"],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/lib/reed_solomon/reed_solomon.ko",
                "kernel/drivers/md/dm-mod.ko",
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-verity.ko.xz"
            ]
        );
        let e = resolve_modules(dep, "", &["nope"]).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn soft_dependencies_through_aliases() {
        let dep = "kernel/lib/libcrc32c.ko:\nkernel/crypto/crc32c_generic.ko:\narch/x86/crypto/crc32c-intel.ko:\nkernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko\n";
        let soft = "softdep libcrc32c pre: crc32c\n";
        let alias = "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\n";
        let idx = ModuleIndex::parse(dep, "", soft, alias).unwrap();
        let order = idx.resolve(&["erofs"]).unwrap();
        let got: Vec<(&str, bool)> = order
            .iter()
            .map(|l| (l.path.as_str(), l.optional))
            .collect();
        assert_eq!(
            got,
            [
                ("arch/x86/crypto/crc32c-intel.ko", true),
                ("kernel/crypto/crc32c_generic.ko", true),
                ("kernel/lib/libcrc32c.ko", false),
                ("kernel/fs/erofs/erofs.ko", false)
            ]
        );
    }

    #[test]
    fn parses_results_and_blobs() {
        let c = "junk\r\nRESULT a PASS\r\n[ 1.0] x RESULT b FAIL rc=1 boom\nBEGIN-BLOB out\naGVs\nbG8=\nEND-BLOB out\nRESULT a FAIL late\nVM-END rc=0\n";
        let r = VmRun::parse(c);
        assert!(r.finished);
        assert!(!r.results["a"].pass, "a later FAIL wins");
        assert_eq!(r.results["b"].detail, "rc=1 boom");
        assert_eq!(r.blobs["out"], b"hello");
    }

    #[test]
    fn newc_archive_is_read_by_cpio() {
        crate::require_tool("cpio", "cpio");
        let mut i = Initramfs::new();
        i.file("etc/hello", 0o644, b"hi\n".to_vec())
            .symlink("bin/sh", "/bin/busybox");
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.cpio");
        i.write(&a);
        let out = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(fs::File::open(&a).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("etc/hello"), "{listing}");
        assert!(listing.contains("bin/sh -> /bin/busybox"), "{listing}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw") && l.contains("dev/console")),
            "{listing}"
        );
        let x = dir.path().join("x");
        fs::create_dir(&x).unwrap();
        let out = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
            .current_dir(&x)
            .stdin(fs::File::open(&a).unwrap())
            .output()
            .unwrap();
        // Device nodes need privileges; the file must come out regardless.
        let _ = out;
        assert_eq!(fs::read(x.join("etc/hello")).unwrap(), b"hi\n");
    }
}
