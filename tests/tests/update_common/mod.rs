//! Shared by the `update_*` tests of `sysext update`: running a test body
//! in its own private mount namespace (as root), signed DDI images made
//! with `mksquashfs` and the signing crate's DDI writer, a feed published
//! with the releases crate (signed `SHA256SUMS`, transfer files) and served
//! by the loopback mock server, and a node tree for `--root` with the
//! feed's transfer file, OpenPGP keyring, `verity.d` certificate and a
//! `signed` image policy.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use integration_tests::upstream::Upstream;
#[allow(unused_imports)] // re-exported for the test files; not every one uses all
pub use integration_tests::{require_root, require_tool, run_ok};
use releases::{
    publish_dir, BestBefore, ExtensionName, FeedUrl, ImageToPublish, ManifestSigner, OpenPgpSigner,
    PublishOptions,
};
use sha2::{Digest, Sha256};
use signing::keys::{KeygenOptions, SigningKey};
use sysupdate::{Arch, Version};

const IN_NS: &str = "SYSEXT_UPDATE_TEST_IN_NS";

/// Runs the calling test (`name`, a top-level `#[test]` fn) again in a
/// child process inside `unshare --mount --propagation private` and
/// returns `false` in the parent, which then just returns. In the child it
/// mounts a private tmpfs on `/run` and returns `true`: the body runs
/// there. Not being root is a failure, not a skip.
pub fn in_private_ns(name: &str) -> bool {
    if std::env::var_os(IN_NS).is_none() {
        // Build the binary here, once, outside the namespace.
        let _ = sysext();
    }
    integration_tests::rerun_in_private_ns(
        name,
        IN_NS,
        &[("mksquashfs", "squashfs-tools"), ("losetup", "mount")],
    )
}

/// The `sysext` binary.
pub fn sysext() -> PathBuf {
    integration_tests::bin("merge-runtime", "sysext")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(p: &Path) -> String {
    sha256_hex(&fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
}

/// An RSA key and self-signed certificate for root-hash signatures.
pub fn image_key(dir: &Path, cn: &str) -> SigningKey {
    let d = dir.join(format!("key-{cn}"));
    let g = signing::keys::keygen_with(
        &d,
        cn,
        KeygenOptions {
            rsa_bits: 2048,
            validity_days: 30,
        },
    )
    .expect("keygen");
    SigningKey::from_files(&g.key_path, &g.cert_path, None).expect("load key")
}

/// Pseudo-random, incompressible bytes (so image sizes are predictable).
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("{seed}/{i}").as_bytes()));
        i += 1;
    }
    out.truncate(len);
    out
}

/// Builds a signed (with `key`) DDI of extension `name` at `version`: a
/// squashfs with `usr/lib/extension-release.d/extension-release.NAME`
/// (`ID=debian VERSION_ID=12`), `usr/share/NAME/version` holding the
/// version, `extra` files, and `filler` bytes of noise.
pub fn build_image(
    work: &Path,
    name: &str,
    version: &str,
    key: Option<&SigningKey>,
    extra: &[(&str, &str)],
    filler: usize,
) -> PathBuf {
    let tag = format!(
        "{name}-{version}-{}",
        key.map(|k| k.certificate_fingerprint().to_hex()[..8].to_string())
            .unwrap_or_default()
    );
    let tree = work.join(format!("tree-{tag}"));
    let _ = fs::remove_dir_all(&tree);
    let w = |rel: &str, bytes: &[u8]| {
        let p = tree.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    };
    w(
        &format!("usr/lib/extension-release.d/extension-release.{name}"),
        b"ID=debian\nVERSION_ID=12\n",
    );
    w(&format!("usr/share/{name}/version"), version.as_bytes());
    for (p, c) in extra {
        w(p, c.as_bytes());
    }
    if filler > 0 {
        w(&format!("usr/share/{name}/filler"), &noise(&tag, filler));
    }
    let fs_img = work.join(format!("{tag}.squashfs"));
    let _ = fs::remove_file(&fs_img);
    run_ok(Command::new("mksquashfs").arg(&tree).arg(&fs_img).args([
        "-noappend",
        "-quiet",
        "-all-root",
        "-no-progress",
        "-comp",
        "gzip",
    ]));
    let out = work.join(format!("{tag}.raw"));
    signing::ddi::write_ddi(
        &fs_img,
        &out,
        &signing::ddi::DdiOptions {
            arch: Arch::X86_64,
            key,
            verity: None,
        },
    )
    .expect("write DDI");
    out
}

/// A feed directory published with the releases crate and served over
/// loopback HTTP at `/feed/`.
pub struct Feed {
    pub upstream: Upstream,
    pub dir: PathBuf,
    pub signer: OpenPgpSigner,
    /// Every image file name ever published → its sha256 (hex).
    pub published: BTreeMap<String, String>,
    pub instances_max: u64,
}

impl Feed {
    pub fn new(work: &Path) -> Feed {
        let key = signing::openpgp::OpenPgpSecretKey::generate(
            "Update Test Feed <feed@example.org>",
            signing::openpgp::Algorithm::Ed25519,
        )
        .expect("OpenPGP key");
        Feed {
            upstream: Upstream::start(),
            dir: work.join("feed"),
            signer: OpenPgpSigner::new(key).expect("signer"),
            published: BTreeMap::new(),
            instances_max: 3,
        }
    }

    pub fn url(&self) -> FeedUrl {
        FeedUrl::new(self.upstream.url("feed")).unwrap()
    }

    /// Publishes `images` (name, version, DDI path) and serves the result.
    pub fn publish(&mut self, images: &[(&str, &str, &Path)], best_before: Option<BestBefore>) {
        let imgs: Vec<ImageToPublish> = images
            .iter()
            .map(|(n, v, p)| ImageToPublish {
                name: ExtensionName::new(*n).unwrap(),
                version: Version::new(*v).unwrap(),
                arch: Arch::X86_64,
                path: p.to_path_buf(),
                sidecars: Vec::new(),
            })
            .collect();
        let mut opts = PublishOptions::new(self.url(), &self.signer);
        opts.best_before = best_before;
        opts.instances_max = self.instances_max;
        publish_dir(&self.dir, &imgs, &opts).expect("publish");
        self.serve();
    }

    /// Serves every file under the feed directory (and stops serving
    /// removed ones).
    pub fn serve(&mut self) {
        let mut seen = Vec::new();
        fn walk(base: &Path, d: &Path, out: &mut Vec<(String, PathBuf)>) {
            for e in fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push((p.strip_prefix(base).unwrap().display().to_string(), p));
                }
            }
        }
        walk(&self.dir, &self.dir, &mut seen);
        for (rel, p) in &seen {
            let bytes = fs::read(p).unwrap();
            if rel.ends_with(".raw") {
                let name = Path::new(rel)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                self.published.insert(name, sha256_hex(&bytes));
            }
            self.upstream.insert(&format!("/feed/{rel}"), bytes);
        }
    }

    /// A file of the published feed.
    pub fn file(&self, rel: &str) -> Vec<u8> {
        fs::read(self.dir.join(rel)).unwrap_or_else(|e| panic!("feed file {rel}: {e}"))
    }
}

/// A node tree for `--root`.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Node {
    /// A node following extension `name` with the feed's transfer file
    /// `transfer` (e.g. `k.transfer`, `kubernetes-v1.30.transfer`),
    /// trusting `cert_pem` for image signatures (policy `signed`) and the
    /// feed's OpenPGP key for manifests.
    pub fn new(feed: &Feed, name: &str, transfer: &str, cert_pem: &[u8]) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("upd-node")
            .tempdir()
            .unwrap();
        let p = dir.path();
        let w = |rel: &str, bytes: &[u8]| {
            let f = p.join(rel);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, bytes).unwrap();
        };
        w("usr/lib/os-release", b"ID=debian\nVERSION_ID=12\n");
        w("usr/share/host.txt", b"host\n");
        fs::create_dir_all(p.join("etc/extensions")).unwrap();
        w("etc/verity.d/feed.crt", cert_pem);
        w(
            "etc/systemd/import-pubring.gpg",
            &feed.signer.public_keyring(),
        );
        w("etc/sysext/policy.conf", b"policy = signed\n");
        w(
            &format!("etc/sysupdate.{name}.d/{transfer}"),
            &feed.file(&format!("{name}/{transfer}")),
        );
        Node {
            dir,
            name: name.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// `sysext --root ROOT ARGS...`.
    pub fn sysext(&self, args: &[&str]) -> Output {
        Command::new(sysext())
            .arg("--root")
            .arg(self.path())
            .arg("--no-reload")
            .args(args)
            .output()
            .expect("run sysext")
    }

    /// `sysext --root ROOT update --progress=plain ARGS...`, which must
    /// succeed; returns its `--json` report.
    pub fn update_ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.update(args);
        assert!(
            out.status.success(),
            "sysext update failed:\n{}",
            show(&out)
        );
        report(&out)
    }

    /// `sysext --json --root ROOT update --progress=plain ARGS...`.
    pub fn update(&self, args: &[&str]) -> Output {
        let mut a = vec!["--json", "update", "--progress=plain"];
        a.extend_from_slice(args);
        self.sysext(&a)
    }

    /// The file name `/etc/extensions/NAME.raw` resolves to, if any.
    pub fn current(&self) -> Option<String> {
        let link = self.p(&format!("etc/extensions/{}.raw", self.name));
        let t = fs::read_link(&link).ok()?;
        let resolved = link.parent().unwrap().join(t);
        let c = fs::canonicalize(resolved).ok()?;
        Some(c.file_name()?.to_string_lossy().into_owned())
    }

    /// What the merged `/usr/share/NAME/version` says (`None`: not merged).
    pub fn merged_version(&self) -> Option<String> {
        fs::read_to_string(self.p(&format!("usr/share/{}/version", self.name))).ok()
    }

    /// Non-hidden files in the target directory, sorted.
    pub fn instances(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.p(&format!("opt/extensions/{}", self.name)))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.retain(|n| !n.starts_with('.'));
        v.sort();
        v
    }

    /// Every file in the target directory, hidden ones included.
    pub fn all_target_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.p(&format!("opt/extensions/{}", self.name)))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The update state file, parsed (`null` when absent).
    pub fn state(&self) -> serde_json::Value {
        fs::read(self.p("var/lib/sysext/update-state.json"))
            .map(|b| serde_json::from_slice(&b).expect("state file is JSON"))
            .unwrap_or(serde_json::Value::Null)
    }

    /// Writes the transfer file with `f` applied to its text.
    pub fn edit_transfer(&self, transfer: &str, f: impl Fn(&str) -> String) {
        let p = self.p(&format!("etc/sysupdate.{}.d/{transfer}", self.name));
        let t = fs::read_to_string(&p).unwrap();
        fs::write(&p, f(&t)).unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Unmount our overlays so the temporary directory can be removed.
        let _ = self.sysext(&["unmerge"]);
    }
}

pub fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The `--json` report on stdout.
pub fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", show(o)))
}

/// The first component's field of a report.
pub fn field<'a>(r: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    &r["components"][0][key]
}

/// `BEST-BEFORE` a day after a date long gone.
pub fn stale() -> BestBefore {
    BestBefore {
        days: 1,
        today: sysupdate::Date::new(2001, 1, 1).unwrap(),
    }
}

/// The PEM certificate of a key.
pub fn cert_pem(k: &SigningKey) -> Vec<u8> {
    k.certificate_pem().unwrap()
}

pub fn image_name(name: &str, version: &str) -> String {
    format!("{name}-{version}-x86-64.raw")
}
