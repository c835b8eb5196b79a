//! A loopback stand-in for every upstream the eight recipes download from:
//! dl.k8s.io, github.com release downloads, the GitHub releases API (with
//! pagination, pre-releases and drafts), raw.githubusercontent.com
//! (Kubernetes' schedule.yaml, containerd's runc-version),
//! download.docker.com (HTML listings) and download.falco.org — the same
//! URL paths, checksum files and archive layouts as the real sites, served
//! under `/HOST/…` and reached through `--mirror https://HOST/=…/HOST/`.
//!
//! Archives are generated here and hold real executables of the right
//! architecture: `/bin/true` for x86-64 and the aarch64 dynamic loader
//! from Debian's `libc6-arm64-cross` for arm64, each with a trailer naming
//! the file (so every input has its own digest) and optional padding (for
//! the benchmark's bandwidth cap). NVIDIA's bundle holds real `.deb`
//! packages made by `dpkg-deb`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use integration_tests::upstream::{GithubRelease, Upstream};
use sha2::{Digest, Sha256};
use sysupdate::Arch;

pub const X86_64_BINARY: &str = "/bin/true";
pub const ARM64_BINARY: &str = "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1";

/// The hosts the recipes download from.
pub const HOSTS: [&str; 6] = [
    "dl.k8s.io",
    "github.com",
    "api.github.com",
    "raw.githubusercontent.com",
    "download.docker.com",
    "download.falco.org",
];

/// What each recipe resolves to with this fixture (`bakery build NAME`,
/// or `NAME-v1.30` for the streamed ones).
pub const EXPECTED: [(&str, &str); 8] = [
    ("kubernetes-v1.30", "v1.30.10"),
    ("k3s-v1.30", "v1.30.10+k3s1"),
    ("rke2-v1.30", "v1.30.10+rke2r1"),
    ("containerd", "1.7.20"),
    ("docker", "27.1.1"),
    ("nvidia-runtime", "1.16.2"),
    ("wasmtime", "25.0.1"),
    ("falco", "0.38.2"),
];

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A real executable for `arch` with a trailer naming it, plus `pad`
/// bytes of incompressible padding.
pub fn elf(arch: Arch, tag: &str, pad: usize) -> Vec<u8> {
    let src = match arch {
        Arch::X86_64 => X86_64_BINARY,
        Arch::Arm64 => ARM64_BINARY,
        other => panic!("no fixture binary for {other}"),
    };
    let mut b = fs::read(src).unwrap_or_else(|e| {
        panic!("cannot read {src} ({e}); install the Debian package libc6-arm64-cross")
    });
    b.extend_from_slice(format!("\0fixture:{tag}\0").as_bytes());
    // xorshift: deterministic, incompressible padding.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (tag.len() as u64);
    for c in tag.bytes() {
        x = x.rotate_left(5) ^ u64::from(c);
    }
    b.reserve(pad);
    for _ in 0..pad {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(x as u8);
    }
    b
}

/// An archive entry.
pub enum Entry {
    Dir(String),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
}

pub fn file(path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Entry {
    Entry::File(path.to_string(), data.into(), mode)
}

pub fn dir(path: &str) -> Entry {
    Entry::Dir(path.to_string())
}

pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(1000);
        h.set_gid(1000);
        match e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A Debian package made by the real `dpkg-deb` from `files` (path,
/// bytes, mode) and `links` (path, target).
pub fn deb(
    package: &str,
    version: &str,
    arch: &str,
    files: &[(&str, Vec<u8>, u32)],
    links: &[(&str, &str)],
) -> Vec<u8> {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {package}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: Fixture <fixture@example.org>\nDescription: look-alike of {package}\n"
        ),
    )
    .unwrap();
    for (p, data, mode) in files {
        let f = root.join(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&f, fs::Permissions::from_mode(*mode)).unwrap();
    }
    for (p, target) in links {
        let f = root.join(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &f).unwrap();
    }
    let doc = root.join(format!("usr/share/doc/{package}/copyright"));
    fs::create_dir_all(doc.parent().unwrap()).unwrap();
    fs::write(&doc, "fixture\n").unwrap();
    let out = t.path().join("p.deb");
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&out)
        .output()
        .expect("cannot run dpkg-deb (Debian package dpkg)");
    assert!(
        st.status.success(),
        "dpkg-deb failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    fs::read(out).unwrap()
}

/// The upstreams, with every file in place.
pub struct Fixture {
    pub up: Upstream,
    /// URL path → sha256 of what is served, for tests that tamper.
    pub digests: BTreeMap<String, String>,
}

const ARCHES: [(Arch, &str, &str); 2] = [
    (Arch::X86_64, "amd64", "x86_64"),
    (Arch::Arm64, "arm64", "aarch64"),
];

impl Fixture {
    /// Starts the server; `pad` bytes of padding go into every executable.
    pub fn start(pad: usize) -> Fixture {
        let up = Upstream::start();
        let mut f = Fixture {
            up,
            digests: BTreeMap::new(),
        };
        f.kubernetes(pad);
        f.k3s(pad);
        f.rke2(pad);
        f.containerd(pad);
        f.docker(pad);
        f.nvidia(pad);
        f.wasmtime(pad);
        f.falco(pad);
        f
    }

    /// `https://HOST/=http://127.0.0.1:PORT/HOST/` for every host.
    pub fn mirror_rules(&self) -> Vec<String> {
        HOSTS
            .iter()
            .map(|h| format!("https://{h}/={}/{h}/", self.up.base_url()))
            .collect()
    }

    /// `--mirror RULE` arguments for the CLI.
    pub fn mirror_args(&self) -> Vec<String> {
        self.mirror_rules()
            .into_iter()
            .flat_map(|r| ["--mirror".to_string(), r])
            .collect()
    }

    pub fn put(&mut self, path: &str, bytes: Vec<u8>) {
        self.digests.insert(path.to_string(), sha256_hex(&bytes));
        self.up.insert(path, bytes);
    }

    fn releases(&self, owner: &str, repo: &str, releases: Vec<GithubRelease>) {
        // Two per page, so every listing needs the Link pagination.
        self.up.github_releases(
            "/api.github.com",
            owner,
            repo,
            releases,
            2,
            Some("https://api.github.com"),
        );
    }

    fn kubernetes(&mut self, pad: usize) {
        self.put(
            "/raw.githubusercontent.com/kubernetes/website/main/data/releases/schedule.yaml",
            b"schedules:\n\
- release: \"1.31\"\n  releaseDate: 2024-08-13\n  next:\n    release: 1.31.2\n  previousPatches:\n  - release: 1.31.1\n  - release: 1.31.0\n\
- release: \"1.30\"\n  releaseDate: 2024-04-17\n  previousPatches:\n  - release: 1.30.10\n  - release: 1.30.9\n\
- release: \"1.29\"\n  previousPatches:\n  - release: 1.29.15\n"
                .to_vec(),
        );
        for v in ["v1.30.10", "v1.31.1"] {
            for (arch, a, _) in ARCHES {
                for bin in ["kubelet", "kubeadm", "kubectl"] {
                    let b = elf(arch, &format!("kubernetes/{bin}/{v}/{a}"), pad);
                    let path = format!("/dl.k8s.io/{v}/bin/linux/{a}/{bin}");
                    // dl.k8s.io's .sha256 is the bare digest, no newline.
                    let sum = sha256_hex(&b).into_bytes();
                    self.put(&path, b);
                    self.put(&format!("{path}.sha256"), sum);
                }
            }
        }
        self.releases(
            "containernetworking",
            "plugins",
            vec![
                GithubRelease::new("v1.6.0-rc.1").prerelease(),
                GithubRelease::new("v1.5.1"),
                GithubRelease::new("v1.5.0"),
                GithubRelease::new("v1.4.0"),
            ],
        );
        for (arch, a, _) in ARCHES {
            let mut entries = vec![dir("./")];
            for p in ["bridge", "host-local", "loopback", "portmap"] {
                entries.push(file(
                    &format!("./{p}"),
                    elf(arch, &format!("cni/{p}/{a}"), pad / 4),
                    0o755,
                ));
            }
            entries.push(file("./LICENSE", b"Apache-2.0\n".to_vec(), 0o644));
            let name = format!("cni-plugins-linux-{a}-v1.5.1.tgz");
            let t = gz(&tar(&entries));
            let sum = format!("{}  {name}\n", sha256_hex(&t));
            let base = "/github.com/containernetworking/plugins/releases/download/v1.5.1";
            self.put(&format!("{base}/{name}"), t);
            self.put(&format!("{base}/{name}.sha256"), sum.into_bytes());
        }
    }

    fn k3s(&mut self, pad: usize) {
        self.releases(
            "k3s-io",
            "k3s",
            vec![
                GithubRelease::new("v1.31.1+k3s1"),
                GithubRelease::new("v1.30.11-rc1+k3s1").prerelease(),
                GithubRelease::new("v1.30.10+k3s1"),
                GithubRelease::new("v1.30.9+k3s2"),
                GithubRelease::new("v1.30.9+k3s1"),
                GithubRelease::new("v1.29.15+k3s1").draft(),
                GithubRelease::new("v1.29.14+k3s1"),
            ],
        );
        for v in ["v1.30.10+k3s1", "v1.31.1+k3s1"] {
            let base = format!("/github.com/k3s-io/k3s/releases/download/{v}");
            for (arch, a, _) in ARCHES {
                let name = if arch == Arch::X86_64 {
                    "k3s".to_string()
                } else {
                    format!("k3s-{a}")
                };
                let b = elf(arch, &format!("k3s/{v}/{a}"), pad);
                let list = format!(
                    "{}  k3s-airgap-images-{a}.tar.gz\n{}  {name}\n{}  k3s-images.txt\n",
                    "1".repeat(64),
                    sha256_hex(&b),
                    "2".repeat(64)
                );
                self.put(&format!("{base}/{name}"), b);
                self.put(&format!("{base}/sha256sum-{a}.txt"), list.into_bytes());
            }
        }
    }

    fn rke2(&mut self, pad: usize) {
        self.releases(
            "rancher",
            "rke2",
            vec![
                GithubRelease::new("v1.31.1+rke2r1"),
                GithubRelease::new("v1.30.10+rke2r1"),
                GithubRelease::new("v1.30.9+rke2r2"),
            ],
        );
        let v = "v1.30.10+rke2r1";
        let base = format!("/github.com/rancher/rke2/releases/download/{v}");
        for (arch, a, _) in ARCHES {
            let unit = |kind: &str| {
                format!(
                    "[Unit]\nDescription=Rancher Kubernetes Engine v2 ({kind})\nWants=network-online.target\n\
                     After=network-online.target\n\n[Service]\nType=notify\nEnvironmentFile=-/etc/default/%N\n\
                     EnvironmentFile=-/usr/local/lib/systemd/system/%N.env\nKillMode=process\nDelegate=yes\n\
                     ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service'\n\
                     ExecStartPre=-/sbin/modprobe br_netfilter\nExecStart=/usr/local/bin/rke2 {kind}\n\
                     ExecStopPost=-/bin/sh -c \"systemd-cgls /system.slice/%n | true\"\n\n[Install]\nWantedBy=multi-user.target\n"
                )
                .into_bytes()
            };
            let entries = vec![
                dir("bin/"),
                file("bin/rke2", elf(arch, &format!("rke2/{v}/{a}"), pad), 0o755),
                file(
                    "bin/rke2-killall.sh",
                    b"#!/bin/sh\necho killall\n".to_vec(),
                    0o755,
                ),
                file(
                    "bin/rke2-uninstall.sh",
                    b"#!/bin/sh\nrm -rf /\n".to_vec(),
                    0o755,
                ),
                dir("lib/"),
                dir("lib/systemd/"),
                dir("lib/systemd/system/"),
                file(
                    "lib/systemd/system/rke2-server.service",
                    unit("server"),
                    0o644,
                ),
                file(
                    "lib/systemd/system/rke2-server.env",
                    b"HOME=/root\n".to_vec(),
                    0o644,
                ),
                file(
                    "lib/systemd/system/rke2-agent.service",
                    unit("agent"),
                    0o644,
                ),
                file(
                    "lib/systemd/system/rke2-agent.env",
                    b"HOME=/root\n".to_vec(),
                    0o644,
                ),
                dir("share/"),
                dir("share/rke2/"),
                file("share/rke2/LICENSE.txt", b"Apache-2.0\n".to_vec(), 0o644),
            ];
            let name = format!("rke2.linux-{a}.tar.gz");
            let t = gz(&tar(&entries));
            let list = format!(
                "{}  rke2-images.linux-{a}.tar.zst\n{}  {name}\n",
                "3".repeat(64),
                sha256_hex(&t)
            );
            self.put(&format!("{base}/{name}"), t);
            self.put(&format!("{base}/sha256sum-{a}.txt"), list.into_bytes());
        }
    }

    fn containerd(&mut self, pad: usize) {
        self.releases(
            "containerd",
            "containerd",
            vec![
                GithubRelease::new("api/v1.8.0"),
                GithubRelease::new("v2.0.0-rc.3").prerelease(),
                GithubRelease::new("v1.7.20"),
                GithubRelease::new("v1.7.19"),
                GithubRelease::new("v1.6.35"),
            ],
        );
        self.put(
            "/raw.githubusercontent.com/containerd/containerd/refs/tags/v1.7.20/script/setup/runc-version",
            b"v1.1.13\n".to_vec(),
        );
        let base = "/github.com/containerd/containerd/releases/download/v1.7.20";
        let mut runc_list = String::new();
        for (arch, a, _) in ARCHES {
            let mut entries = vec![dir("bin/")];
            for b in ["containerd", "containerd-shim-runc-v2", "ctr"] {
                entries.push(file(
                    &format!("bin/{b}"),
                    elf(arch, &format!("containerd/{b}/{a}"), pad),
                    0o755,
                ));
            }
            let name = format!("containerd-static-1.7.20-linux-{a}.tar.gz");
            let t = gz(&tar(&entries));
            let sum = format!("{}  {name}\n", sha256_hex(&t));
            self.put(&format!("{base}/{name}"), t);
            self.put(&format!("{base}/{name}.sha256sum"), sum.into_bytes());
            let runc = elf(arch, &format!("runc/v1.1.13/{a}"), pad);
            runc_list.push_str(&format!("{}  runc.{a}\n", sha256_hex(&runc)));
            self.put(
                &format!("/github.com/opencontainers/runc/releases/download/v1.1.13/runc.{a}"),
                runc,
            );
        }
        runc_list.push_str(&format!("{}  runc.tar.xz\n", "4".repeat(64)));
        self.put(
            "/github.com/opencontainers/runc/releases/download/v1.1.13/runc.sha256sum",
            runc_list.into_bytes(),
        );
    }

    fn docker(&mut self, pad: usize) {
        for (arch, _, u) in ARCHES {
            let mut names = vec![
                "docker-26.1.4.tgz",
                "docker-27.1.1.tgz",
                "docker-rootless-extras-27.1.1.tgz",
                "docker-rootless-extras-28.0.0.tgz",
            ];
            if arch == Arch::Arm64 {
                // Only one architecture has it: not a usable version.
                names.push("docker-27.1.2.tgz");
            }
            let mut html = format!("<html><head><title>Index of linux/static/stable/{u}/</title></head>\n<body><h1>Index of linux/static/stable/{u}/</h1><hr><pre><a href=\"../\">../</a>\n");
            for n in names {
                html.push_str(&format!(
                    "<a href=\"{n}\">{n}</a>   2024-07-23 17:20  65M\n"
                ));
            }
            html.push_str("</pre><hr></body></html>\n");
            self.put(
                &format!("/download.docker.com/linux/static/stable/{u}/"),
                html.into_bytes(),
            );
            let mut entries = vec![dir("docker/")];
            for b in [
                "docker",
                "dockerd",
                "containerd",
                "containerd-shim-runc-v2",
                "ctr",
                "docker-init",
                "docker-proxy",
                "runc",
            ] {
                entries.push(file(
                    &format!("docker/{b}"),
                    elf(arch, &format!("docker/{b}/{u}"), pad / 2),
                    0o755,
                ));
            }
            self.put(
                &format!("/download.docker.com/linux/static/stable/{u}/docker-27.1.1.tgz"),
                gz(&tar(&entries)),
            );
        }
    }

    fn nvidia(&mut self, pad: usize) {
        self.releases(
            "NVIDIA",
            "nvidia-container-toolkit",
            vec![
                GithubRelease::new("v1.17.0-rc.1").prerelease(),
                GithubRelease::new("v1.16.2"),
                GithubRelease::new("v1.16.1"),
            ],
        );
        let v = "1.16.2";
        for (arch, a, u) in ARCHES {
            let triple = format!("{u}-linux-gnu");
            let lib = format!("usr/lib/{triple}/libnvidia-container.so.{v}");
            let link = format!("usr/lib/{triple}/libnvidia-container.so.1");
            let debs = [
                (
                    "libnvidia-container1",
                    deb(
                        "libnvidia-container1",
                        &format!("{v}-1"),
                        a,
                        &[(
                            lib.as_str(),
                            elf(arch, &format!("nvidia/lib/{a}"), pad / 4),
                            0o644,
                        )],
                        &[(link.as_str(), &format!("libnvidia-container.so.{v}"))],
                    ),
                ),
                (
                    "libnvidia-container-tools",
                    deb(
                        "libnvidia-container-tools",
                        &format!("{v}-1"),
                        a,
                        &[(
                            "usr/bin/nvidia-container-cli",
                            elf(arch, &format!("nvidia/cli/{a}"), pad / 4),
                            0o755,
                        )],
                        &[],
                    ),
                ),
                (
                    "nvidia-container-toolkit-base",
                    deb(
                        "nvidia-container-toolkit-base",
                        &format!("{v}-1"),
                        a,
                        &[
                            (
                                "usr/bin/nvidia-ctk",
                                elf(arch, &format!("nvidia/ctk/{a}"), pad / 4),
                                0o755,
                            ),
                            (
                                "usr/bin/nvidia-container-runtime",
                                elf(arch, &format!("nvidia/runtime/{a}"), pad / 4),
                                0o755,
                            ),
                            (
                                "etc/nvidia-container-runtime/config.toml",
                                b"# packaged\n".to_vec(),
                                0o644,
                            ),
                        ],
                        &[],
                    ),
                ),
                (
                    "nvidia-container-toolkit",
                    deb(
                        "nvidia-container-toolkit",
                        &format!("{v}-1"),
                        a,
                        &[(
                            "usr/bin/nvidia-container-runtime-hook",
                            elf(arch, &format!("nvidia/hook/{a}"), pad / 4),
                            0o755,
                        )],
                        &[],
                    ),
                ),
            ];
            let top = format!("release-v{v}-stable");
            let mut entries = vec![
                dir(&format!("{top}/")),
                dir(&format!("{top}/packages/")),
                dir(&format!("{top}/packages/ubuntu18.04/")),
                dir(&format!("{top}/packages/ubuntu18.04/{a}/")),
            ];
            for (pkg, bytes) in debs {
                entries.push(file(
                    &format!("{top}/packages/ubuntu18.04/{a}/{pkg}_{v}-1_{a}.deb"),
                    bytes,
                    0o644,
                ));
            }
            // The -dev package is in the bundle but not used.
            entries.push(file(
                &format!("{top}/packages/ubuntu18.04/{a}/libnvidia-container-dev_{v}-1_{a}.deb"),
                b"!<arch>\n".to_vec(),
                0o644,
            ));
            self.put(
                &format!("/github.com/NVIDIA/nvidia-container-toolkit/releases/download/v{v}/nvidia-container-toolkit_{v}_deb_{a}.tar.gz"),
                gz(&tar(&entries)),
            );
        }
    }

    fn wasmtime(&mut self, pad: usize) {
        self.releases(
            "bytecodealliance",
            "wasmtime",
            vec![
                GithubRelease::new("dev").prerelease(),
                GithubRelease::new("v25.0.1"),
                GithubRelease::new("v25.0.0"),
                GithubRelease::new("v24.0.0"),
            ],
        );
        for (arch, _, u) in ARCHES {
            let top = format!("wasmtime-v25.0.1-{u}-linux");
            let entries = vec![
                dir(&format!("{top}/")),
                file(
                    &format!("{top}/wasmtime"),
                    elf(arch, &format!("wasmtime/{u}"), pad),
                    0o755,
                ),
                file(&format!("{top}/LICENSE"), b"Apache-2.0\n".to_vec(), 0o644),
                file(&format!("{top}/README.md"), b"# wasmtime\n".to_vec(), 0o644),
            ];
            self.put(
                &format!(
                    "/github.com/bytecodealliance/wasmtime/releases/download/v25.0.1/{top}.tar.xz"
                ),
                xz(&tar(&entries)),
            );
        }
    }

    fn falco(&mut self, pad: usize) {
        self.releases(
            "falcosecurity",
            "falco",
            vec![
                GithubRelease::new("0.38.2"),
                GithubRelease::new("0.38.1"),
                GithubRelease::new("v0.1.0"),
            ],
        );
        for (arch, _, u) in ARCHES {
            let top = format!("falco-0.38.2-{u}");
            let entries = vec![
                dir(&format!("{top}/")),
                dir(&format!("{top}/usr/")),
                dir(&format!("{top}/usr/bin/")),
                file(
                    &format!("{top}/usr/bin/falco"),
                    elf(arch, &format!("falco/{u}"), pad),
                    0o755,
                ),
                file(
                    &format!("{top}/usr/bin/falcoctl"),
                    elf(arch, &format!("falcoctl/{u}"), pad / 2),
                    0o755,
                ),
                dir(&format!("{top}/usr/share/")),
                dir(&format!("{top}/usr/share/falco/")),
                dir(&format!("{top}/usr/share/falco/plugins/")),
                file(
                    &format!("{top}/usr/share/falco/plugins/libcontainer.so"),
                    elf(arch, &format!("falco/plugin/{u}"), pad / 4),
                    0o755,
                ),
                dir(&format!("{top}/etc/")),
                dir(&format!("{top}/etc/falco/")),
                file(
                    &format!("{top}/etc/falco/falco.yaml"),
                    b"engine:\n  kind: modern_ebpf\n".to_vec(),
                    0o644,
                ),
                file(
                    &format!("{top}/etc/falco/falco_rules.yaml"),
                    b"- rule: fixture\n".to_vec(),
                    0o644,
                ),
                dir(&format!("{top}/etc/falcoctl/")),
                file(
                    &format!("{top}/etc/falcoctl/falcoctl.yaml"),
                    b"artifact: {}\n".to_vec(),
                    0o644,
                ),
            ];
            self.put(
                &format!("/download.falco.org/packages/bin/{u}/falco-0.38.2-{u}.tar.gz"),
                gz(&tar(&entries)),
            );
        }
    }
}

/// Copies the repository's `recipes/` into `dest` (tests must not write
/// lock files into the checkout).
pub fn copy_recipes(dest: &Path) {
    let src = integration_tests::workspace_root().join("recipes");
    copy_tree(&src, dest);
}

fn copy_tree(src: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        let to = dest.join(e.file_name());
        if t.is_dir() {
            copy_tree(&e.path(), &to);
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else if e.file_name().to_string_lossy().ends_with(".lock") {
            // Lock files of the checkout pin real upstream digests.
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}
