//! The eight recipes end to end, against a loopback server that mimics
//! every upstream (see `recipes_common`): versions and streams from the
//! GitHub API (paginated), Kubernetes' schedule and Docker's listing; lock
//! files; builds for x86-64 and arm64 through `--mirror`; the images'
//! contents checked with `unsquashfs` and `readelf`, and merged by the real
//! `systemd-sysext` in a private mount namespace; tampered downloads,
//! unpinned inputs, offline rebuilds from the lock, and the lints.

mod recipes_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::{
    bakery_bin, in_private_mount_ns, output, require_root, require_tool, run_ok, shell_quote,
    SysextRoot,
};
use recipes_common::{copy_recipes, Fixture, EXPECTED};

/// A scratch area: a copy of recipes/, a download cache, an output dir.
struct Env {
    fx: Fixture,
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let fx = Fixture::start(0);
        let tmp = tempfile::tempdir().unwrap();
        copy_recipes(&tmp.path().join("recipes"));
        fs::create_dir_all(tmp.path().join("config")).unwrap();
        Env { fx, tmp }
    }

    fn recipes(&self) -> PathBuf {
        self.tmp.path().join("recipes")
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    fn out(&self) -> PathBuf {
        self.tmp.path().join("out")
    }

    /// `bakery SUBCOMMAND ARGS… --recipes-dir … --cache-dir … --mirror …`.
    fn bakery(&self, sub: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(bakery_bin());
        cmd.arg(sub)
            .args(args)
            .arg("--recipes-dir")
            .arg(self.recipes());
        if sub != "list" {
            cmd.arg("--cache-dir")
                .arg(self.cache())
                .args(self.fx.mirror_args());
        }
        cmd.env("XDG_CONFIG_HOME", self.tmp.path().join("config"))
            .env_remove("GITHUB_TOKEN")
            .env("SOURCE_DATE_EPOCH", "1700000000");
        output(&mut cmd)
    }

    fn ok(&self, sub: &str, args: &[&str]) -> String {
        let out = self.bakery(sub, args);
        assert!(
            out.status.success(),
            "bakery {sub} {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, sub: &str, args: &[&str]) -> String {
        let out = self.bakery(sub, args);
        assert!(
            !out.status.success(),
            "bakery {sub} {args:?} succeeded but should fail\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn build(&self, names: &[&str], extra: &[&str]) -> String {
        let out = self.out();
        let mut args: Vec<&str> = names.to_vec();
        args.extend(["--output", out.to_str().unwrap()]);
        args.extend(extra);
        self.ok("build", &args)
    }
}

fn image_name(target: &str, version: &str, arch: &str) -> String {
    let name = EXPECTED
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(t, _)| t.split("-v1.").next().unwrap_or(t))
        .unwrap_or(target);
    format!("{name}-{version}-{arch}.raw")
}

/// Every path in a squashfs image, per `unsquashfs -l`, without the
/// `squashfs-root/` prefix.
fn listing(image: &Path) -> Vec<String> {
    let out = run_ok(Command::new("unsquashfs").arg("-l").arg(image));
    out.lines()
        .filter_map(|l| l.strip_prefix("squashfs-root/"))
        .map(str::to_string)
        .collect()
}

/// `unsquashfs -lls` line of one path (type, mode, owner, link target).
fn lls(image: &Path, path: &str) -> String {
    let out = run_ok(Command::new("unsquashfs").arg("-lls").arg(image));
    out.lines()
        .find(|l| {
            l.contains(&format!("squashfs-root/{path}")) && {
                let after = l
                    .split(&format!("squashfs-root/{path}"))
                    .nth(1)
                    .unwrap_or("x");
                after.is_empty() || after.starts_with(" -> ")
            }
        })
        .unwrap_or_else(|| panic!("{path} not in {}:\n{out}", image.display()))
        .to_string()
}

fn cat(image: &Path, path: &str) -> Vec<u8> {
    output(Command::new("unsquashfs").arg("-cat").arg(image).arg(path)).stdout
}

/// `readelf -h` machine of a file inside an image.
fn machine(image: &Path, path: &str) -> String {
    let t = tempfile::NamedTempFile::new().unwrap();
    fs::write(t.path(), cat(image, path)).unwrap();
    let out = run_ok(Command::new("readelf").arg("-h").arg(t.path()));
    out.lines()
        .find(|l| l.trim_start().starts_with("Machine:"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// The files each image must hold (the spec's list).
fn expected_paths(recipe: &str) -> &'static [&'static str] {
    match recipe {
        "kubernetes" => &[
            "usr/bin/kubelet",
            "usr/bin/kubeadm",
            "usr/bin/kubectl",
            "usr/local/bin/cni/bridge",
            "usr/local/bin/cni/host-local",
            "usr/local/bin/cni/loopback",
            "usr/lib/systemd/system/kubelet.service",
            "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
            "usr/lib/systemd/system/multi-user.target.d/10-kubernetes.conf",
            "usr/libexec/kubernetes/kubelet-plugins/volume/exec",
            "usr/lib/extension-release.d/extension-release.kubernetes",
        ],
        "k3s" => &[
            "usr/local/bin/k3s",
            "usr/local/bin/kubectl",
            "usr/local/bin/ctr",
            "usr/local/bin/crictl",
            "usr/local/lib/systemd/system/k3s.service",
            "usr/local/lib/systemd/system/k3s-agent.service",
        ],
        "rke2" => &[
            "usr/local/bin/rke2",
            "usr/local/bin/rke2-killall.sh",
            "usr/local/lib/systemd/system/rke2-server.service",
            "usr/local/lib/systemd/system/rke2-agent.service",
            "usr/local/share/rke2/LICENSE.txt",
        ],
        "containerd" => &[
            "usr/bin/containerd",
            "usr/bin/containerd-shim-runc-v2",
            "usr/bin/ctr",
            "usr/bin/runc",
            "usr/lib/systemd/system/containerd.service",
            "usr/lib/systemd/system/multi-user.target.d/10-containerd.conf",
            "usr/share/containerd/config.toml",
        ],
        "docker" => &[
            "usr/bin/docker",
            "usr/bin/dockerd",
            "usr/bin/containerd",
            "usr/bin/runc",
            "usr/bin/ctr",
            "usr/bin/docker-init",
            "usr/bin/docker-proxy",
            "usr/lib/systemd/system/docker.service",
            "usr/lib/systemd/system/docker.socket",
            "usr/lib/systemd/system/containerd.service",
            "usr/lib/systemd/system/sockets.target.d/10-docker.conf",
            "usr/lib/systemd/system/multi-user.target.d/10-docker.conf",
        ],
        "nvidia-runtime" => &[
            "usr/bin/nvidia-container-cli",
            "usr/bin/nvidia-container-runtime",
            "usr/bin/nvidia-container-runtime-hook",
            "usr/bin/nvidia-ctk",
            "usr/lib64/libnvidia-container.so.1",
            "usr/lib64/libnvidia-container.so.1.16.2",
            "usr/local/nvidia",
            "usr/lib/systemd/system/containerd.service.d/10-nvidia.conf",
            "usr/lib/systemd/system/docker.service.d/10-nvidia.conf",
            "usr/lib/tmpfiles.d/10-nvidia-runtime.conf",
        ],
        "wasmtime" => &["usr/bin/wasmtime"],
        "falco" => &[
            "usr/bin/falco",
            "usr/bin/falcoctl",
            "usr/share/falco/plugins/libcontainer.so",
            "usr/share/falco/etc/falco/falco.yaml",
            "usr/share/falco/etc/falcoctl/falcoctl.yaml",
            "usr/lib/tmpfiles.d/10-falco.conf",
            "usr/lib/systemd/system/falco-modern-bpf.service",
            "usr/lib/systemd/system/falcoctl-artifact-follow.service",
        ],
        other => panic!("unknown recipe {other}"),
    }
}

fn recipe_of(target: &str) -> &str {
    target.split("-v1.").next().unwrap_or(target)
}

fn targets() -> Vec<&'static str> {
    EXPECTED.iter().map(|(t, _)| *t).collect()
}

#[test]
fn all_eight_lock_build_for_both_arches_and_merge() {
    require_root();
    require_tool("unsquashfs", "squashfs-tools");
    require_tool("readelf", "binutils");
    require_tool("systemd-sysext", "systemd");
    let env = Env::new();

    // Lock all eight through the mirrors (the locks go into the copy).
    let locked = env.ok("lock", &targets());
    for (target, version) in EXPECTED {
        assert!(
            locked.contains(&format!("locked {target} at {version}")),
            "{target}:\n{locked}"
        );
    }
    // Docker, wasmtime, falco and NVIDIA publish no checksum: pinned.
    for pinned in [
        "docker (x86-64)",
        "wasmtime (arm64)",
        "falco (x86-64)",
        "toolkit (arm64)",
    ] {
        assert!(
            locked.contains(&format!("  {pinned}: no published checksum; pinned")),
            "{locked}"
        );
    }
    let klock = fs::read_to_string(env.recipes().join("kubernetes/kubernetes-v1.30.lock")).unwrap();
    assert!(klock.contains("version = \"v1.30.10\""), "{klock}");
    assert!(klock.contains("cni = \"v1.5.1\""), "{klock}");
    assert!(
        klock.contains("url = \"https://dl.k8s.io/v1.30.10/bin/linux/arm64/kubelet\""),
        "{klock}"
    );
    assert!(
        klock.contains("checked = \"https://dl.k8s.io/v1.30.10/bin/linux/arm64/kubelet.sha256\"")
    );
    let clock = fs::read_to_string(env.recipes().join("containerd/bakery.lock")).unwrap();
    assert!(clock.contains("runc = \"v1.1.13\""), "{clock}");
    let dlock = fs::read_to_string(env.recipes().join("docker/bakery.lock")).unwrap();
    assert!(dlock.contains("checked = \"pinned\""), "{dlock}");
    let listed = env.ok("list", &[]);
    assert!(
        listed.contains("locked:        kubernetes-v1.30 = v1.30.10"),
        "{listed}"
    );

    // Build all eight, both architectures, in one run.
    let built = env.build(&targets(), &[]);
    let out = env.out();
    for (target, version) in EXPECTED {
        let recipe = recipe_of(target);
        assert!(
            built.contains(&format!("built {recipe} {version}")),
            "{built}"
        );
        for arch in ["x86-64", "arm64"] {
            let image = out.join(image_name(target, version, arch));
            assert!(image.is_file(), "{} missing:\n{built}", image.display());
            let files = listing(&image);
            for p in expected_paths(recipe) {
                assert!(
                    files.iter().any(|f| f == p),
                    "{recipe} {arch}: no {p} in {files:#?}"
                );
            }
            assert!(
                !files.iter().any(|f| f == "usr/sbin" || f == "etc"),
                "{files:?}"
            );
            assert!(!files.iter().any(|f| f.starts_with("etc/")), "{files:?}");
            let rel = String::from_utf8(cat(
                &image,
                &format!("usr/lib/extension-release.d/extension-release.{recipe}"),
            ))
            .unwrap();
            assert!(rel.contains(&format!("ARCHITECTURE={arch}\n")), "{rel}");
            assert!(
                rel.contains(&format!("SYSEXT_VERSION_ID={version}\n")),
                "{rel}"
            );
            let prov: serde_json::Value = serde_json::from_slice(
                &fs::read(
                    out.join(image_name(target, version, arch).replace(".raw", ".provenance.json")),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(prov["unpinned"], false);
            assert!(prov["lock"].as_str().unwrap().ends_with(".lock"));
        }
    }
    // The right architecture's executables (readelf is the oracle).
    for (target, path) in [
        ("kubernetes-v1.30", "usr/bin/kubelet"),
        ("k3s-v1.30", "usr/local/bin/k3s"),
        ("nvidia-runtime", "usr/lib64/libnvidia-container.so.1.16.2"),
        ("wasmtime", "usr/bin/wasmtime"),
    ] {
        let v = EXPECTED.iter().find(|(t, _)| *t == target).unwrap().1;
        assert!(machine(&out.join(image_name(target, v, "x86-64")), path).contains("X86-64"));
        assert!(machine(&out.join(image_name(target, v, "arm64")), path).contains("AArch64"));
    }
    // Specifics of the spec.
    let k = out.join(image_name("kubernetes-v1.30", "v1.30.10", "x86-64"));
    assert!(
        lls(&k, "usr/bin/kubelet").starts_with("-rwxr-xr-x root/root"),
        "{}",
        lls(&k, "usr/bin/kubelet")
    );
    let dropin = String::from_utf8(cat(
        &k,
        "usr/lib/systemd/system/multi-user.target.d/10-kubernetes.conf",
    ))
    .unwrap();
    assert!(dropin.contains("Upholds=kubelet.service"), "{dropin}");
    let k3s = out.join(image_name("k3s-v1.30", "v1.30.10+k3s1", "arm64"));
    assert!(lls(&k3s, "usr/local/bin/kubectl").ends_with("-> k3s"));
    let rke2 = listing(&out.join(image_name("rke2-v1.30", "v1.30.10+rke2r1", "x86-64")));
    assert!(
        !rke2.iter().any(|f| f.ends_with("rke2-uninstall.sh")),
        "{rke2:?}"
    );
    let nv = out.join(image_name("nvidia-runtime", "1.16.2", "x86-64"));
    assert!(lls(&nv, "usr/local/nvidia").ends_with("-> /opt/nvidia"));
    assert!(lls(&nv, "usr/lib64/libnvidia-container.so.1")
        .ends_with("-> libnvidia-container.so.1.16.2"));
    let docker = out.join(image_name("docker", "27.1.1", "x86-64"));
    let sock = String::from_utf8(cat(
        &docker,
        "usr/lib/systemd/system/sockets.target.d/10-docker.conf",
    ))
    .unwrap();
    assert!(sock.contains("Upholds=docker.socket"), "{sock}");
    let falco = out.join(image_name("falco", "0.38.2", "arm64"));
    let tmpfiles = String::from_utf8(cat(&falco, "usr/lib/tmpfiles.d/10-falco.conf")).unwrap();
    assert!(tmpfiles.contains("C+ /etc/falco - - - - /usr/share/falco/etc/falco"));

    // systemd-sysext merges every x86-64 image into a host root.
    let root = SysextRoot::new("ID=flatcar\nVERSION_ID=3815.2.0\nSYSEXT_LEVEL=1.0\n");
    for (target, version) in EXPECTED {
        root.add_image(
            recipe_of(target),
            &out.join(image_name(target, version, "x86-64")),
        );
    }
    let r = shell_quote(root.path().as_os_str());
    let script = format!(
        "{setup}systemd-sysext merge --root={r}\n\
         echo '--- status'\ncat {r}/usr/.systemd-sysext/extensions | sort\n\
         echo '--- files'\n\
         ls {r}/usr/bin/kubelet {r}/usr/local/bin/k3s {r}/usr/local/bin/rke2 {r}/usr/bin/runc \
            {r}/usr/bin/dockerd {r}/usr/bin/nvidia-ctk {r}/usr/bin/wasmtime {r}/usr/bin/falco\n\
         ls {r}/usr/lib/extension-release.d/ | sort\n\
         systemd-sysext unmerge --root={r}\n\
         echo '--- after'\nls {r}/usr/bin\n",
        setup = root.shell_setup()
    );
    let run = in_private_mount_ns(&script);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "merge failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for (target, _) in EXPECTED {
        assert!(
            stdout.contains(&format!("extension-release.{}\n", recipe_of(target))),
            "{stdout}"
        );
    }
    let after = stdout.split("--- after\n").nth(1).unwrap_or("");
    assert!(after.trim().is_empty(), "unmerge left {after}");

    // A repeated build with nothing changed rebuilds nothing.
    let again = env.build(&targets(), &[]);
    assert_eq!(again.matches("up to date").count(), 8, "{again}");
    assert!(!again.contains("built "), "{again}");
}

#[test]
fn streams_pick_the_newest_patch_in_uapi_order() {
    let env = Env::new();
    let v = env.ok("versions", &["kubernetes"]);
    assert!(v.contains("kubernetes-v1.31  v1.31.1"), "{v}");
    assert!(v.contains("kubernetes-v1.30  v1.30.10"), "{v}");
    let first = v
        .split("versions:\n")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    assert_eq!(first, "v1.31.1");
    let v = env.ok("versions", &["kubernetes-v1.30"]);
    assert_eq!(v.lines().collect::<Vec<_>>(), ["v1.30.10", "v1.30.9"]);
    // k3s: pagination followed, pre-releases and drafts dropped,
    // v1.30.10+k3s1 newer than v1.30.9+k3s2.
    let v = env.ok("versions", &["k3s-v1.30", "--limit", "0"]);
    assert_eq!(
        v.lines().collect::<Vec<_>>(),
        ["v1.30.10+k3s1", "v1.30.9+k3s2", "v1.30.9+k3s1"]
    );
    let all = env.ok("versions", &["k3s", "--limit", "0"]);
    assert!(
        all.contains("v1.29.14+k3s1") && !all.contains("v1.29.15") && !all.contains("rc1"),
        "{all}"
    );
    let api = env
        .fx
        .up
        .requests_for("/api.github.com/repos/k3s-io/k3s/releases");
    assert!(
        api.iter()
            .any(|r| r.query.as_deref().unwrap_or("").contains("page=4")),
        "{api:?}"
    );
    // Docker: only versions listed for every architecture; no
    // rootless-extras; containerd's api/ tags are not versions.
    assert_eq!(
        env.ok("versions", &["docker"]).lines().collect::<Vec<_>>(),
        ["27.1.1", "26.1.4"]
    );
    assert_eq!(
        env.ok("versions", &["containerd"])
            .lines()
            .collect::<Vec<_>>(),
        ["1.7.20", "1.7.19", "1.6.35"]
    );
    assert_eq!(
        env.ok("versions", &["falco"]).lines().collect::<Vec<_>>(),
        ["0.38.2", "0.38.1"]
    );

    // Without a lock, `kubernetes-v1.30` resolves upstream to v1.30.10
    // although v1.31.1 exists, and checks the .sha256 files.
    let built = env.build(&["kubernetes-v1.30", "k3s-v1.30"], &["--arch", "x86-64"]);
    assert!(built.contains("built kubernetes v1.30.10"), "{built}");
    assert!(built.contains("built k3s v1.30.10+k3s1"), "{built}");
    assert!(env.out().join("kubernetes-v1.30.10-x86-64.raw").is_file());
    let prov =
        fs::read_to_string(env.out().join("kubernetes-v1.30.10-x86-64.provenance.json")).unwrap();
    assert!(
        prov.contains(
            "\"verified\": \"https://dl.k8s.io/v1.30.10/bin/linux/amd64/kubelet.sha256\""
        ),
        "{prov}"
    );
    assert!(env
        .fx
        .up
        .requests_for("/dl.k8s.io/v1.31.1/bin/linux/amd64/kubelet")
        .is_empty());
    // A stream that does not exist, and a recipe without streams.
    let e = env.fails("build", &["kubernetes-v1.99"]);
    assert!(
        e.contains("no version in stream v1.99") && e.contains("v1.31 (v1.31.1)"),
        "{e}"
    );
    let e = env.fails("build", &["docker-v1.30"]);
    assert!(e.contains("docker: has no streams"), "{e}");
}

/// Every file in the cache hashes to its name.
fn cache_is_clean(cache: &Path, bad: &str) {
    let mut stack = vec![cache.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !d.ends_with("tmp"),
                    "a temporary download was left: {}",
                    e.path().display()
                );
                let digest = recipes_common::sha256_hex(&fs::read(e.path()).unwrap());
                assert_eq!(
                    digest,
                    name,
                    "{} does not hash to its name",
                    e.path().display()
                );
                assert_ne!(digest, bad, "the bad download was cached");
            }
        }
    }
}

#[test]
fn tampered_downloads_are_refused_and_nothing_is_kept() {
    let env = Env::new();
    // Wrong bytes behind a correct checksum file.
    let path = "/dl.k8s.io/v1.30.10/bin/linux/amd64/kubelet";
    let good = env.fx.digests[path].clone();
    let evil = recipes_common::elf(sysupdate::Arch::X86_64, "evil", 0);
    let bad = recipes_common::sha256_hex(&evil);
    env.fx.up.insert(path, evil);
    let e = env.fails(
        "build",
        &[
            "kubernetes-v1.30",
            "--arch",
            "x86-64",
            "--output",
            env.out().to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("https://dl.k8s.io/v1.30.10/bin/linux/amd64/kubelet"),
        "{e}"
    );
    assert!(
        e.contains(&format!("expected sha256 {good}")) && e.contains(&format!("got sha256 {bad}")),
        "{e}"
    );
    assert!(
        integration_tests::list_dir(&env.out())
            .iter()
            .all(|f| !f.ends_with(".raw")),
        "{:?}",
        integration_tests::list_dir(&env.out())
    );
    cache_is_clean(&env.cache(), &bad);

    // A checksum file that does not match what is served (the download is
    // right, the published digest is not).
    let mut env2 = Env::new();
    let sums = "/github.com/k3s-io/k3s/releases/download/v1.30.10+k3s1/sha256sum-arm64.txt";
    let forged = "5".repeat(64);
    env2.fx
        .put(sums, format!("{forged}  k3s-arm64\n").into_bytes());
    let e = env2.fails(
        "build",
        &[
            "k3s-v1.30",
            "--arch",
            "arm64",
            "--output",
            env2.out().to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("https://github.com/k3s-io/k3s/releases/download/v1.30.10+k3s1/k3s-arm64"),
        "{e}"
    );
    assert!(e.contains(&format!("expected sha256 {forged}")), "{e}");
    assert!(!env2.out().join("k3s-v1.30.10+k3s1-arm64.raw").exists());
    cache_is_clean(&env2.cache(), "");

    // A pinned digest in the lock that the mirror no longer serves.
    env.ok("lock", &["wasmtime"]);
    let wpath = "/github.com/bytecodealliance/wasmtime/releases/download/v25.0.1/wasmtime-v25.0.1-x86_64-linux.tar.xz";
    let replaced = recipes_common::xz(&recipes_common::tar(&[recipes_common::file(
        "wasmtime-v25.0.1-x86_64-linux/wasmtime",
        recipes_common::elf(sysupdate::Arch::X86_64, "other", 0),
        0o755,
    )]));
    env.fx.up.insert(wpath, replaced);
    // `bakery lock` downloaded (and cached) the original: start cold.
    fs::remove_dir_all(env.cache()).unwrap();
    let e = env.fails(
        "build",
        &[
            "wasmtime",
            "--arch",
            "x86-64",
            "--output",
            env.out().to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("wasmtime-v25.0.1-x86_64-linux.tar.xz") && e.contains("checksum mismatch"),
        "{e}"
    );
    assert!(!env.out().join("wasmtime-25.0.1-x86-64.raw").exists());
}

#[test]
fn unpinned_inputs_need_a_lock_or_the_flag_which_is_recorded() {
    let env = Env::new();
    let out = env.out();
    let e = env.fails("build", &["docker", "--output", out.to_str().unwrap()]);
    assert!(e.contains("input docker for x86-64"), "{e}");
    assert!(
        e.contains("run `bakery lock docker`") && e.contains("--allow-unpinned"),
        "{e}"
    );
    assert!(integration_tests::list_dir(&out).is_empty());
    let built = env.build(&["docker"], &["--allow-unpinned", "--arch", "arm64"]);
    assert!(
        built.contains(
            "unpinned: https://download.docker.com/linux/static/stable/aarch64/docker-27.1.1.tgz"
        ),
        "{built}"
    );
    let prov: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("docker-27.1.1-arm64.provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["unpinned"], true);
    assert_eq!(prov["inputs"][0]["verified"], "unpinned");
}

#[test]
fn locked_rebuild_needs_no_network_and_gives_the_same_bytes() {
    let mut env = Env::new();
    let names = ["containerd", "wasmtime", "nvidia-runtime"];
    env.ok("lock", &names);
    env.build(&names, &[]);
    let out = env.out();
    let images: Vec<String> = integration_tests::list_dir(&out)
        .into_iter()
        .filter(|f| f.ends_with(".raw"))
        .collect();
    assert_eq!(images.len(), 6, "{images:?}");
    let before: Vec<Vec<u8>> = images
        .iter()
        .map(|f| fs::read(out.join(f)).unwrap())
        .collect();
    let sums_before = fs::read_to_string(out.join("SHA256SUMS")).unwrap();

    // Upstream goes away.
    env.fx.up.stop();
    let unchanged = env.build(&names, &[]);
    assert_eq!(unchanged.matches("up to date").count(), 3, "{unchanged}");

    // Delete the output: rebuilt from the lock and the cache alone.
    fs::remove_dir_all(&out).unwrap();
    let rebuilt = env.build(&names, &[]);
    assert!(
        rebuilt.contains("inputs: 0 downloaded, 4 from the cache"),
        "{rebuilt}"
    );
    for (f, b) in images.iter().zip(&before) {
        assert_eq!(
            &fs::read(out.join(f)).unwrap(),
            b,
            "{f} differs after the offline rebuild"
        );
    }
    assert_eq!(
        fs::read_to_string(out.join("SHA256SUMS")).unwrap(),
        sums_before
    );

    // A changed option (another compression) is not "up to date".
    let other = env.build(
        &["wasmtime"],
        &["--compression", "gzip", "--arch", "x86-64"],
    );
    assert!(other.contains("built wasmtime 25.0.1"), "{other}");

    // Without the cache, the stopped upstream makes the build fail and
    // names the URL.
    fs::remove_dir_all(env.cache()).unwrap();
    let e = env.fails(
        "build",
        &["wasmtime", "--force", "--output", out.to_str().unwrap()],
    );
    assert!(
        e.contains("https://github.com/bytecodealliance/wasmtime/releases/download/v25.0.1/"),
        "{e}"
    );
}

#[test]
fn a_stale_lock_is_refused_with_what_to_do() {
    let env = Env::new();
    env.ok("lock", &["wasmtime"]);
    let recipe = env.recipes().join("wasmtime/recipe.toml");
    let text = fs::read_to_string(&recipe).unwrap();
    fs::write(&recipe, text.replace("linux.tar.xz", "linux-musl.tar.xz")).unwrap();
    let e = env.fails(
        "build",
        &["wasmtime", "--output", env.out().to_str().unwrap()],
    );
    assert!(
        e.contains("wasmtime/bakery.lock: is stale") && e.contains("run `bakery lock wasmtime`"),
        "{e}"
    );
}

#[test]
fn lints_catch_wrong_arch_and_missing_exec_start() {
    let env = Env::new();
    // The arm64 download serves an x86-64 binary (a wrong architecture map).
    let path = "/github.com/bytecodealliance/wasmtime/releases/download/v25.0.1/wasmtime-v25.0.1-aarch64-linux.tar.xz";
    env.fx.up.insert(
        path,
        recipes_common::xz(&recipes_common::tar(&[recipes_common::file(
            "wasmtime-v25.0.1-aarch64-linux/wasmtime",
            recipes_common::elf(sysupdate::Arch::X86_64, "wrong", 0),
            0o755,
        )])),
    );
    let e = env.fails(
        "build",
        &[
            "wasmtime",
            "--allow-unpinned",
            "--arch",
            "arm64",
            "--output",
            env.out().to_str().unwrap(),
        ],
    );
    assert!(e.contains("the arm64 image fails 1 lint"), "{e}");
    assert!(
        e.contains("/usr/bin/wasmtime: ELF 64-bit") && e.contains("x86-64"),
        "{e}"
    );
    assert!(integration_tests::list_dir(&env.out())
        .iter()
        .all(|f| !f.ends_with(".raw")));

    // A unit whose ExecStart is not shipped.
    let unit = env
        .recipes()
        .join("containerd/files/usr/lib/systemd/system/containerd.service");
    let text = fs::read_to_string(&unit).unwrap();
    fs::write(
        &unit,
        text.replace(
            "ExecStart=/usr/bin/containerd",
            "ExecStart=/usr/bin/containerd-typo",
        ),
    )
    .unwrap();
    let e = env.fails(
        "build",
        &[
            "containerd",
            "--arch",
            "x86-64",
            "--output",
            env.out().to_str().unwrap(),
        ],
    );
    assert!(
        e.contains(
            "/usr/lib/systemd/system/containerd.service: ExecStart= runs /usr/bin/containerd-typo"
        ),
        "{e}"
    );
}

#[test]
fn hostile_archives_from_upstream_are_refused() {
    let env = Env::new();
    let path = "/github.com/bytecodealliance/wasmtime/releases/download/v25.0.1/wasmtime-v25.0.1-x86_64-linux.tar.xz";
    // A `../` entry that would land outside the staging root.
    let mut h = tar::Header::new_gnu();
    let name = b"wasmtime-v25.0.1-x86_64-linux/../../../../tmp/evil";
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"evil"[..]).unwrap();
    env.fx
        .up
        .insert(path, recipes_common::xz(&b.into_inner().unwrap()));
    let e = env.fails(
        "build",
        &[
            "wasmtime",
            "--allow-unpinned",
            "--arch",
            "x86-64",
            "--output",
            env.out().to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("wasmtime-v25.0.1-x86_64-linux.tar.xz") && e.contains("'..'"),
        "{e}"
    );
    assert!(!Path::new("/tmp/evil").exists());
    assert!(integration_tests::list_dir(&env.out())
        .iter()
        .all(|f| !f.ends_with(".raw")));
}

#[test]
fn recipe_errors_name_file_line_and_key() {
    let env = Env::new();
    let recipe = env.recipes().join("k3s/recipe.toml");
    let text = fs::read_to_string(&recipe).unwrap();
    fs::write(&recipe, text.replace("k3s{suffix}\"", "k3s{sufix}\"")).unwrap();
    let line = fs::read_to_string(&recipe)
        .unwrap()
        .lines()
        .position(|l| l.contains("{sufix}"))
        .unwrap()
        + 1;
    let e = env.fails("build", &["k3s-v1.30"]);
    assert!(
        e.contains(&format!(
            "k3s/recipe.toml:{line}:7: key `source[1].url`: unknown variable {{sufix}}"
        )),
        "{e}"
    );
    let e = env.fails("build", &["nosuch"]);
    assert!(
        e.contains("no recipe \"nosuch\"") && e.contains("known: containerd, docker"),
        "{e}"
    );
}

#[test]
fn the_mirror_file_points_every_upstream_at_the_mirror() {
    let env = Env::new();
    let dir = env.tmp.path().join("config/bakery");
    fs::create_dir_all(&dir).unwrap();
    let rules: String = env
        .fx
        .mirror_rules()
        .iter()
        .map(|r| {
            let (from, to) = r.split_once('=').unwrap();
            format!("[[mirror]]\nfrom = \"{from}\"\nto = \"{to}\"\n")
        })
        .collect();
    fs::write(dir.join("mirrors.toml"), rules).unwrap();
    let out = output(
        Command::new(bakery_bin())
            .args(["versions", "wasmtime", "--recipes-dir"])
            .arg(env.recipes())
            .arg("--cache-dir")
            .arg(env.cache())
            .env("XDG_CONFIG_HOME", env.tmp.path().join("config"))
            .env_remove("GITHUB_TOKEN"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["25.0.1", "25.0.0", "24.0.0"]
    );
    assert!(!env
        .fx
        .up
        .requests_for("/api.github.com/repos/bytecodealliance/wasmtime/releases")
        .is_empty());
}
