//! Helpers shared by the end-to-end tests: locating the built binaries,
//! private mount namespaces, temporary roots for `systemd-sysext --root`,
//! and running real tools with useful failure messages.
//!
//! Binaries: `env!("CARGO_BIN_EXE_…")` exists only inside the package that
//! owns the binary, so [`bin`] asks the same `cargo` that runs the tests for
//! the workspace's binaries (`cargo build --workspace --bins`: the same
//! profile, target directory and feature unification as the
//! `cargo build --workspace --bins` that `scripts/test.sh` runs first, so it
//! finds them fresh instead of rebuilding the dependency graph with other
//! features) and takes the path from cargo's JSON messages. Library behaviour is tested by calling the library directly
//! (this crate depends on `bakery`); the binaries are run to test the CLI.
//!
//! Root: tests that mount call [`require_root`] first, which panics with a
//! clear message when not root: CI runs as root, and a test that cannot run
//! there must fail, not skip.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The workspace root (holds `Cargo.toml`, `examples/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `examples/NAME` in the workspace.
pub fn example(name: &str) -> PathBuf {
    workspace_root().join("examples").join(name)
}

/// Path of binary `name` from package `package`, built on first use.
pub fn bin(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let map = BUILT.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(name) {
        return p.clone();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--locked", "--workspace", "--bins"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("cannot run cargo");
    assert!(
        out.status.success(),
        "cargo build --workspace --bins (for {package}/{name}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo did not report an executable for {package}/{name}"));
    map.insert(name.to_string(), path.clone());
    path
}

/// The `bakery` binary.
pub fn bakery_bin() -> PathBuf {
    bin("bakery", "bakery")
}

/// Panics with a clear message unless running as root.
pub fn require_root() {
    // The effective uid, read from /proc (no libc call needed).
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert!(
        euid == "0",
        "this test mounts file systems and must run as root (euid is {euid}); \
         run the suite as root, e.g. `sudo ./scripts/test.sh` — CI runs as root, so this is a failure, not a skip"
    );
}

/// Panics unless `tool` is on PATH, naming the Debian package to install.
pub fn require_tool(tool: &str, debian_package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; install the Debian package {debian_package} (./scripts/test.sh does)"
    );
}

/// Runs `cmd`, panicking with its output if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and panics with stdout/stderr unless it succeeds; returns
/// stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a `sh -eu` script in a new private mount namespace
/// (`unshare -m --propagation private`) with a fresh tmpfs on `/run`, so
/// nothing it mounts is visible outside and everything disappears when it
/// exits. Needs root.
pub fn in_private_mount_ns(script: &str) -> Output {
    let full =
        format!("mount -t tmpfs -o mode=0755 tmpfs /run\nmount --make-shared /run\n{script}");
    output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-euc"])
            .arg(full),
    )
}

/// Runs the calling test (named `name`, a top-level `#[test]` fn) again in a
/// child process inside `unshare --mount --propagation private` with `env`
/// set, and returns `false` in the parent (which then just returns). In the
/// child (where `env` is set) it mounts a private tmpfs on `/run` and
/// returns `true`: the body runs there. Not being root, or a missing tool
/// from `tools` (`(command, Debian package)`), is a failure, not a skip.
pub fn rerun_in_private_ns(name: &str, env: &str, tools: &[(&str, &str)]) -> bool {
    if std::env::var_os(env).is_some() {
        run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"]));
        return true;
    }
    require_root();
    require_tool("unshare", "util-linux");
    for (tool, pkg) in tools {
        require_tool(tool, pkg);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args([
            name,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(env, "1")
        .output()
        .expect("cannot run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- {name} in a private mount namespace ---\n{stdout}\n{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in its mount namespace ({}); output above",
        out.status
    );
    false
}

/// A directory laid out as a host for `systemd-sysext --root=DIR`:
/// `etc/os-release`, a `usr/` with one host file, and the extension
/// directories.
pub struct SysextRoot {
    dir: tempfile::TempDir,
}

/// The host file every [`SysextRoot`] has, to check it stays visible.
pub const HOST_MARKER: &str = "usr/share/host-marker";

impl SysextRoot {
    /// A root whose `etc/os-release` has `os_release` as its content.
    pub fn new(os_release: &str) -> SysextRoot {
        let dir = tempfile::Builder::new()
            .prefix("sysext-root")
            .tempdir()
            .expect("cannot create a temporary root");
        let p = dir.path();
        for d in ["etc", "usr/share", "usr/bin", "opt", "var/lib/extensions"] {
            fs::create_dir_all(p.join(d)).expect("cannot create root directories");
        }
        fs::write(p.join("etc/os-release"), os_release).expect("cannot write os-release");
        fs::write(p.join(HOST_MARKER), "host\n").expect("cannot write host marker");
        SysextRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `image` to `var/lib/extensions/NAME.raw`.
    pub fn add_image(&self, name: &str, image: &Path) -> PathBuf {
        let dest = self
            .path()
            .join("var/lib/extensions")
            .join(format!("{name}.raw"));
        fs::copy(image, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", image.display()));
        dest
    }

    /// Shell lines that make the root a shared mount point inside the
    /// namespace, so that mounts systemd-sysext makes in its own child
    /// namespace propagate back to ours (systemd 252 merges in a forked
    /// child and bind-mounts the overlay onto ROOT/usr from there).
    pub fn shell_setup(&self) -> String {
        let r = shell_quote(self.path().as_os_str());
        format!("mount --bind {r} {r}\nmount --make-shared {r}\n")
    }
}

/// Single-quotes `s` for sh.
pub fn shell_quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Every file name in `dir` (empty if it does not exist), sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("readable dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

pub mod github;
pub mod sfdisk;
pub mod upstream;
pub mod vm;
