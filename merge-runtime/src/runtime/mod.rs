//! The commands: `merge`, `refresh`, `unmerge`, `status`, `list` and
//! `verify`. Owns the orchestration — which image is refused and why, the
//! staging namespace in which images are mounted and overlays built, the
//! swap of the new stack into place with no gap, the state recorded next
//! to the marker, and the service-manager reload.
//!
//! How a merge or refresh runs:
//! 1. discover images, load the policy and the host's os-release;
//! 2. (refresh) stop if the fingerprint of everything that decides the
//!    result equals the one recorded in the merged trees;
//! 3. enter a private, slave copy of the mount namespace; mount a tmpfs
//!    workspace under `/run/sysext-forge`;
//! 4. per image: policy and signature check, read-only loop device,
//!    verity check, read-only mount, extension-release lookup and
//!    validation; a refused image is unmounted and its loop device
//!    detached right away, the others go on;
//! 5. unmount the current overlays *in the staging namespace only*, so the
//!    host's own `/usr` is visible to stack under the new overlay;
//! 6. per hierarchy: write the marker, mount the overlay
//!    (`lowerdir=META:EXT_HIGHEST:…:EXT_LOWEST:HOST`, read-only), record
//!    `dev`, and take a detached clone of it (`open_tree(OPEN_TREE_CLONE)`);
//! 7. return to the original namespace and put each clone in place: on an
//!    existing merge with `move_mount(MOVE_MOUNT_BENEATH)` under the old
//!    overlay, then detach the old one — `/usr` never lacks the extensions.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::mount::{
    move_mount, open_tree, unmount, MountFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sysupdate::extension::{wants_manager_reload, ImageName};

use crate::discover::{discover, Discovery, EntryKind, Format, Image, Masked, Skipped};
use crate::loopdev::{LoopDevice, Window};
use crate::mounts::{self, is_merged_tree, MARKER_DIR, STATE_FILE};
use crate::release::{self, HostRelease, HostReleaseError};
use crate::root::{self, Root};
use crate::verify::{
    self, BackendChoice, EffectivePolicy, Policy, PolicyError, VerifyError, VerityMaterial,
    VerityMode,
};

/// Default directory for our lock and staging workspaces.
pub const RUN_DIR: &str = "/run/sysext-forge";

/// Errors that stop a whole command (a single bad image never does).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("need to be privileged (root, CAP_SYS_ADMIN) to {0}")]
    NotPrivileged(&'static str),
    #[error("hierarchy {0} is already merged; use `sysext refresh` to re-merge, or `sysext unmerge` first")]
    AlreadyMerged(String),
    #[error(transparent)]
    Host(#[from] HostReleaseError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("invalid hierarchy {0:?} in $SYSTEMD_SYSEXT_HIERARCHIES: expected absolute paths without `..`, separated by `:`")]
    Hierarchy(String),
    #[error("{path}: {source}")]
    Verify {
        path: PathBuf,
        #[source]
        source: Box<VerifyError>,
    },
    #[error("{0}: not an image this tool can check (expected a squashfs, erofs or ext4 image with verity sidecars, or a GPT disk image)")]
    Unsupported(PathBuf),
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn errno_ctx(context: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> Error {
    let context = context.into();
    move |e| Error::Io {
        context,
        source: e.into(),
    }
}

/// Settings shared by all commands.
#[derive(Debug, Clone)]
pub struct Options {
    /// The OS tree to operate on (`--root`); `/` for the running system.
    pub root: PathBuf,
    /// Hierarchies to merge, absolute (default `/usr`, `/opt`).
    pub hierarchies: Vec<String>,
    /// Skip extension-release validation (`--force`).
    pub force: bool,
    /// `--policy`; `None` reads the policy file.
    pub policy: Option<Policy>,
    pub backend: BackendChoice,
    /// Never reload the service manager (`--no-reload`).
    pub no_reload: bool,
    /// Lock file and staging workspaces.
    pub run_dir: PathBuf,
}

impl Options {
    pub fn new(root: impl Into<PathBuf>) -> Options {
        Options {
            root: root.into(),
            hierarchies: vec!["/usr".into(), "/opt".into()],
            force: false,
            policy: None,
            backend: BackendChoice::Auto,
            no_reload: false,
            run_dir: PathBuf::from(RUN_DIR),
        }
    }

    /// Applies `$SYSTEMD_SYSEXT_HIERARCHIES` (a colon-separated list of
    /// absolute paths), as systemd-sysext does.
    pub fn hierarchies_from_env(&mut self) -> Result<(), Error> {
        if let Ok(v) = std::env::var("SYSTEMD_SYSEXT_HIERARCHIES") {
            let mut hs = Vec::new();
            for h in v.split(':').filter(|s| !s.is_empty()) {
                let p = Path::new(h);
                if !p.is_absolute() || !root::is_plain_relative(p.strip_prefix("/").unwrap_or(p)) {
                    return Err(Error::Hierarchy(h.to_string()));
                }
                hs.push(h.trim_end_matches('/').to_string());
            }
            self.hierarchies = hs;
        }
        Ok(())
    }
}

/// Why and where an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Format,
    Policy,
    Signature,
    Verity,
    Mount,
    Release,
    Compatibility,
}

/// What happened to one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    Merged,
    Refused { stage: Stage, reason: String },
}

/// One image in a merge report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub path: PathBuf,
    pub format: Option<String>,
    pub verification: VerityMode,
    pub root_hash: Option<String>,
    pub signer: Option<String>,
    #[serde(default)]
    pub reload_manager: bool,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// How the new overlay replaced the old one in a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Swap {
    /// Nothing was merged there before: mounted.
    Mounted,
    /// Mounted beneath the old overlay, then the old one detached.
    Beneath,
    /// Kernel without `MOVE_MOUNT_BENEATH` (< 6.5): mounted on top of the
    /// old overlay, which stays covered until `unmerge` (no gap either).
    Stacked,
    /// The new set has nothing for this hierarchy: the old overlay was
    /// detached.
    Unmerged,
}

/// Result per hierarchy.
#[derive(Debug, Clone, Serialize)]
pub struct HierarchyReport {
    pub hierarchy: String,
    pub swap: Swap,
    /// The overlay layers, top first.
    pub layers: Vec<PathBuf>,
}

/// What a merge or refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Merged,
    /// Refresh found nothing changed and left the merge alone.
    Unchanged,
    /// No image could be used; nothing merged (and, on refresh, any old
    /// merge undone).
    NothingToMerge,
}

/// The report of `merge` and `refresh`.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub action: Action,
    /// Merged extension names in stack order (lowest first).
    pub extensions: Vec<String>,
    pub hierarchies: Vec<HierarchyReport>,
    pub images: Vec<ImageReport>,
    pub masked: Vec<Masked>,
    pub skipped: Vec<Skipped>,
    pub policy: EffectivePolicy,
    /// Hierarchies unmerged (refresh to an empty set).
    pub unmerged: Vec<String>,
    pub reloaded_manager: bool,
}

/// What we record next to the marker (`.systemd-sysext/sysext-forge.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeState {
    pub tool: String,
    pub fingerprint: String,
    pub merged_at_usec: u64,
    pub policy: Policy,
    pub images: Vec<ImageReport>,
}

fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn require_root(what: &'static str) -> Result<(), Error> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotPrivileged(what))
    }
}

/// An exclusive lock serialising merges on this machine.
struct RunLock(#[allow(dead_code)] File);

impl RunLock {
    fn acquire(run_dir: &Path) -> Result<RunLock, Error> {
        root::mkdir_p(run_dir, 0o700).map_err(io_ctx(format!("creating {}", run_dir.display())))?;
        let p = run_dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_ctx(format!("opening {}", p.display())))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(errno_ctx(format!("locking {}", p.display())))?;
        Ok(RunLock(f))
    }
}

/// The current state of one hierarchy in the calling namespace.
struct Current {
    hierarchy: String,
    target: PathBuf,
    merged: bool,
    state: Option<MergeState>,
}

fn read_state(tree: &Path) -> Option<MergeState> {
    let text = std::fs::read(tree.join(MARKER_DIR).join(STATE_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn current_state(root: &Root, hierarchies: &[String]) -> Result<Vec<Current>, Error> {
    let mut out = Vec::new();
    for h in hierarchies {
        let target = root
            .resolve_nonexistent(h)
            .map_err(io_ctx(format!("resolving {}", root.join(h).display())))?;
        let merged = is_merged_tree(&target).map_err(io_ctx(format!(
            "checking whether {} is merged",
            target.display()
        )))?;
        let state = if merged { read_state(&target) } else { None };
        out.push(Current {
            hierarchy: h.clone(),
            target,
            merged,
            state,
        });
    }
    Ok(out)
}

fn file_identity(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "{}:{}:{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => "-".into(),
    }
}

/// Everything that decides the result of a merge, hashed.
fn fingerprint(
    opts: &Options,
    root: &Root,
    disc: &Discovery,
    host: &HostRelease,
    policy: &EffectivePolicy,
) -> String {
    let mut h = Sha256::new();
    let mut line = |s: String| {
        h.update(s.as_bytes());
        h.update(b"\n");
    };
    line(format!(
        "sysext-forge-fingerprint v1 root={}",
        root.path().display()
    ));
    line(format!(
        "hierarchies={:?} force={} policy={} backend={:?}",
        opts.hierarchies, opts.force, policy.policy, opts.backend
    ));
    line(format!(
        "host={:?} os-release={}",
        host,
        std::fs::read(&host.os_release_path)
            .map(|b| hex::encode(Sha256::digest(b)))
            .unwrap_or_default()
    ));
    for i in &disc.images {
        line(format!(
            "image {} {} {} {} {:?}",
            i.name,
            i.kind.as_str(),
            i.path.display(),
            i.target.display(),
            i.identity
        ));
        for s in [
            &i.sidecars.roothash,
            &i.sidecars.verity,
            &i.sidecars.signature,
        ]
        .into_iter()
        .flatten()
        {
            line(format!("  sidecar {} {}", s.display(), file_identity(s)));
        }
    }
    for m in &disc.masked {
        line(format!("masked {}", m.name));
    }
    // Certificates decide signature checks.
    for d in signing::pkcs7::VERITY_D_DIRS {
        if let Ok(p) = root.resolve(d) {
            if let Ok(rd) = std::fs::read_dir(&p) {
                let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
                names.sort();
                for n in names {
                    line(format!("cert {} {}", n.display(), file_identity(&n)));
                }
            }
        }
    }
    hex::encode(h.finalize())
}

/// Our staging workspace: a directory under `run_dir` with a tmpfs on it
/// (in the staging namespace only).
struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    fn create(run_dir: &Path) -> Result<Workspace, Error> {
        let dir = run_dir.join(format!("staging.{}", std::process::id()));
        root::mkdir_p(&dir, 0o700).map_err(io_ctx(format!("creating {}", dir.display())))?;
        rustix::mount::mount(
            "sysext-forge",
            &dir,
            "tmpfs",
            MountFlags::empty(),
            Some(c"mode=0700"),
        )
        .map_err(errno_ctx(format!(
            "mounting the staging tmpfs on {}",
            dir.display()
        )))?;
        Ok(Workspace { dir })
    }

    fn ext_dir(&self, name: &ImageName) -> PathBuf {
        self.dir.join("extensions").join(name.as_str())
    }

    fn meta_dir(&self, hierarchy: &str) -> PathBuf {
        self.dir
            .join("meta")
            .join(hierarchy.trim_start_matches('/'))
    }

    fn overlay_dir(&self, hierarchy: &str) -> PathBuf {
        self.dir
            .join("overlay")
            .join(hierarchy.trim_start_matches('/'))
    }
}

/// An image that passed every check, mounted in the staging namespace.
struct Prepared {
    name: ImageName,
    dir: PathBuf,
    report: ImageReport,
    /// Kept until the overlays hold the filesystem; dropping it then only
    /// arms autoclear.
    _loop: Option<LoopDevice>,
}

struct Refusal {
    stage: Stage,
    reason: String,
}

fn refuse(stage: Stage, reason: impl Into<String>) -> Refusal {
    Refusal {
        stage,
        reason: reason.into(),
    }
}

/// The verity material and data window of a raw image or block device.
pub struct Opened {
    pub file: File,
    pub size: u64,
    pub format: Format,
    /// Filesystem format of the data (differs from `format` for a DDI).
    pub fs_format: Format,
    pub data: Window,
    pub material: Option<VerityMaterial>,
}

/// Opens a raw image or block device read-only and finds its verity
/// material (sidecars, or the partitions of a DDI).
pub fn open_image(
    path: &Path,
    sidecars: &crate::discover::Sidecars,
    block: bool,
) -> Result<Opened, (Stage, String)> {
    let mut opened = open_image_unclipped(path, sidecars, block)?;
    // Expose only what the hash tree covers, like a dm-verity device: a
    // (partition) window may be larger for alignment. When it is smaller,
    // verification reports the size mismatch.
    if let Some(m) = &opened.material {
        let covered = verify::covered_data_len(m).map_err(|e| (Stage::Verity, e.to_string()))?;
        if covered < opened.data.size_limit {
            opened.data.size_limit = covered;
            if let Some(m) = &mut opened.material {
                m.data.len = covered;
            }
        }
    }
    Ok(opened)
}

fn open_image_unclipped(
    path: &Path,
    sidecars: &crate::discover::Sidecars,
    block: bool,
) -> Result<Opened, (Stage, String)> {
    let file = File::open(path)
        .map_err(|e| (Stage::Format, format!("opening {}: {e}", path.display())))?;
    let size = if block {
        crate::loopdev::block_size_bytes(&file)
    } else {
        file.metadata().map(|m| m.len())
    }
    .map_err(|e| (Stage::Format, format!("size of {}: {e}", path.display())))?;
    let format = Format::probe(&file)
        .map_err(|e| (Stage::Format, format!("reading {}: {e}", path.display())))?;
    match format {
        Format::Squashfs | Format::Erofs | Format::Ext4 => {
            let material = verify::load_sidecars(sidecars, size).map_err(|e| (Stage::Verity, e.to_string()))?;
            Ok(Opened {
                file,
                size,
                format,
                fs_format: format,
                data: Window {
                    offset: 0,
                    size_limit: size,
                },
                material,
            })
        }
        Format::Gpt => crate::ddi::open_ddi(path, file, size),
        Format::Unknown => Err((
            Stage::Format,
            format!(
                "{}: not a squashfs, erofs or ext4 filesystem nor a GPT disk image (no known magic number)",
                path.display()
            ),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn prepare_one(
    ws: &Workspace,
    img: &Image,
    policy: Policy,
    host: &HostRelease,
    opts: &Options,
    root: &Root,
    backend: &dyn verify::VerityBackend,
    report: &mut ImageReport,
) -> Result<(PathBuf, Option<LoopDevice>), Refusal> {
    let dir = ws.ext_dir(&img.name);
    root::mkdir_p(&dir, 0o700)
        .map_err(|e| refuse(Stage::Mount, format!("creating {}: {e}", dir.display())))?;
    let certs = || signing::pkcs7::TrustedCerts::from_verity_d(root.path());
    let what = img.path.display().to_string();
    let mut loop_dev = None;
    match img.kind {
        EntryKind::Directory => {
            verify::decide(policy, None, &format!("directory image {what}"), certs)
                .map_err(|e| refuse(Stage::Policy, e.to_string()))?;
            rustix::mount::mount_bind(&img.target, &dir).map_err(|e| {
                refuse(
                    Stage::Mount,
                    format!("bind-mounting {}: {e}", img.target.display()),
                )
            })?;
            rustix::mount::mount_remount(&dir, MountFlags::BIND | MountFlags::RDONLY, "").map_err(
                |e| {
                    let _ = unmount(&dir, UnmountFlags::DETACH);
                    refuse(
                        Stage::Mount,
                        format!("making {} read-only: {e}", dir.display()),
                    )
                },
            )?;
            report.verification = VerityMode::None;
        }
        EntryKind::Raw | EntryKind::Block => {
            let opened = open_image(&img.target, &img.sidecars, img.kind == EntryKind::Block)
                .map_err(|(stage, reason)| refuse(stage, reason))?;
            report.format = Some(opened.format.as_str().to_string());
            let decision =
                verify::decide(policy, opened.material.as_ref(), &what, certs).map_err(|e| {
                    let stage = if matches!(e, VerifyError::Signature { .. }) {
                        Stage::Signature
                    } else {
                        Stage::Policy
                    };
                    refuse(stage, e.to_string())
                })?;
            report.signer = decision.signer;
            report.root_hash = opened.material.as_ref().map(|m| m.root_hash.to_hex());
            let dev = LoopDevice::attach(&opened.file, opened.data, &img.target).map_err(|e| {
                refuse(
                    Stage::Mount,
                    format!("setting up a loop device for {}: {e}", img.target.display()),
                )
            })?;
            let device = match &opened.material {
                Some(m) => {
                    let act = backend
                        .activate(&dev, m)
                        .map_err(|e| refuse(Stage::Verity, e.to_string()))?;
                    report.verification = act.mode;
                    act.device
                }
                None => {
                    report.verification = VerityMode::None;
                    dev.path().to_path_buf()
                }
            };
            let fs = opened.fs_format.fs_type().ok_or_else(|| {
                refuse(
                    Stage::Format,
                    format!("{what}: the data is not a squashfs, erofs or ext4 filesystem"),
                )
            })?;
            rustix::mount::mount(
                &device,
                &dir,
                fs,
                MountFlags::RDONLY | MountFlags::NODEV,
                None,
            )
            .map_err(|e| {
                refuse(
                    Stage::Mount,
                    format!("mounting {} ({fs}) from {}: {e}", what, device.display()),
                )
            })?;
            loop_dev = Some(dev);
        }
    }
    // From here on the image is mounted at `dir`.
    let unmount_and = |r: Refusal| {
        let _ =
            unmount(&dir, UnmountFlags::empty()).or_else(|_| unmount(&dir, UnmountFlags::DETACH));
        r
    };
    let found = release::find_extension_release(&dir, &img.name).map_err(|e| {
        unmount_and(refuse(
            Stage::Release,
            format!("looking for extension-release in {what}: {e}"),
        ))
    })?;
    if !opts.force {
        if release::contains_os_release(&dir).unwrap_or(false) {
            return Err(unmount_and(refuse(
                Stage::Compatibility,
                release::Mismatch::ContainsOsRelease.to_string(),
            )));
        }
        let found = found.as_ref().map_err(|detail| {
            unmount_and(refuse(
                Stage::Release,
                format!(
                    "{}",
                    release::Mismatch::NoRelease {
                        detail: detail.clone()
                    }
                ),
            ))
        })?;
        release::validate(&found.file, host)
            .map_err(|m| unmount_and(refuse(Stage::Compatibility, m.to_string())))?;
    }
    if let Ok(f) = &found {
        report.reload_manager = wants_manager_reload(&f.file);
    }
    Ok((dir, loop_dev))
}

fn new_report(img: &Image) -> ImageReport {
    ImageReport {
        name: img.name.to_string(),
        kind: img.kind.as_str().to_string(),
        path: img.path.clone(),
        format: None,
        verification: VerityMode::None,
        root_hash: None,
        signer: None,
        reload_manager: false,
        outcome: Outcome::Merged,
    }
}

/// A built overlay, detached, ready to be put in place.
struct Built {
    hierarchy: String,
    tree: OwnedFd,
    layers: Vec<PathBuf>,
}

fn build_hierarchy(
    ws: &Workspace,
    root: &Root,
    hierarchy: &str,
    stack: &[&Prepared],
    names: &[String],
) -> Result<Option<(Built, PathBuf)>, Error> {
    let host = match root.resolve(hierarchy) {
        Ok(p) => {
            if root::dir_is_empty(&p).map_err(io_ctx(format!("reading {}", p.display())))? {
                None
            } else {
                Some(p)
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(io_ctx(format!(
                "resolving {}",
                root.join(hierarchy).display()
            ))(e))
        }
    };
    let meta = ws.meta_dir(hierarchy);
    let marker = meta.join(MARKER_DIR);
    root::mkdir_p(&marker, 0o755).map_err(io_ctx(format!("creating {}", marker.display())))?;
    std::fs::write(marker.join("extensions"), mounts::extensions_marker(names))
        .map_err(io_ctx("writing the extensions marker"))?;
    let mut layers = vec![meta.clone()];
    // Highest (last sorted) first.
    for p in stack.iter().rev() {
        let rel = hierarchy.trim_start_matches('/');
        let resolved = match root::resolve_in(&p.dir, rel) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(io_ctx(format!(
                    "resolving {hierarchy} in extension {}",
                    p.name
                ))(e))
            }
        };
        if !resolved.is_dir() || root::dir_is_empty(&resolved).unwrap_or(true) {
            continue;
        }
        layers.push(resolved);
    }
    if layers.len() == 1 {
        return Ok(None);
    }
    layers.extend(host);
    let overlay = ws.overlay_dir(hierarchy);
    root::mkdir_p(&overlay, 0o700).map_err(io_ctx(format!("creating {}", overlay.display())))?;
    let options = mounts::lowerdir_option(&layers);
    let coptions = std::ffi::CString::new(options.clone()).map_err(|_| Error::Io {
        context: "overlay options".into(),
        source: io::Error::other("NUL byte in a layer path"),
    })?;
    rustix::mount::mount(
        "sysext",
        &overlay,
        "overlay",
        MountFlags::RDONLY,
        Some(coptions.as_c_str()),
    )
    .map_err(errno_ctx(format!(
        "mounting the overlay for {hierarchy} ({options})"
    )))?;
    let dev = mounts::dev_of(&overlay).map_err(io_ctx(format!("stat {}", overlay.display())))?;
    std::fs::write(marker.join("dev"), mounts::dev_marker(dev))
        .map_err(io_ctx("writing the dev marker"))?;
    let tree = open_tree(
        rustix::fs::CWD,
        &overlay,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(errno_ctx(format!(
        "cloning the overlay mount of {hierarchy}"
    )))?;
    Ok(Some((
        Built {
            hierarchy: hierarchy.to_string(),
            tree,
            layers,
        },
        meta,
    )))
}

/// Does the kernel know `MOVE_MOUNT_BENEATH` (Linux ≥ 6.5)?
pub fn kernel_has_move_mount_beneath() -> bool {
    let uts = rustix::system::uname();
    let rel = uts.release().to_string_lossy();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 5)
}

fn unmount_all_ours(target: &Path) -> Result<bool, Error> {
    let mut any = false;
    while is_merged_tree(target).map_err(io_ctx(format!("checking {}", target.display())))? {
        unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
            .map_err(errno_ctx(format!("unmounting {}", target.display())))?;
        any = true;
    }
    Ok(any)
}

/// Moves the built tree onto `target`, on top of whatever is mounted there.
fn mount_on_top(built: &Built, target: &Path) -> Result<(), Error> {
    move_mount(
        &built.tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(errno_ctx(format!(
        "mounting the merged tree on {}",
        target.display()
    )))
}

fn attach(built: &Built, target: &Path) -> Result<Swap, Error> {
    let was_merged =
        is_merged_tree(target).map_err(io_ctx(format!("checking {}", target.display())))?;
    if !was_merged {
        root::mkdir_p(target, 0o755).map_err(io_ctx(format!("creating {}", target.display())))?;
        mount_on_top(built, target)?;
        return Ok(Swap::Mounted);
    }
    match move_mount(
        &built.tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_BENEATH,
    ) {
        Ok(()) => {
            // The old overlay is on top; detach it to reveal the new one.
            unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW).map_err(errno_ctx(
                format!("detaching the old overlay on {}", target.display()),
            ))?;
            Ok(Swap::Beneath)
        }
        Err(rustix::io::Errno::INVAL) if !kernel_has_move_mount_beneath() => {
            mount_on_top(built, target)?;
            Ok(Swap::Stacked)
        }
        Err(e) => Err(errno_ctx(format!(
            "mounting the new merged tree beneath the old one on {}",
            target.display()
        ))(e)),
    }
}

fn pid1_is_systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm")
            .map(|c| c.trim() == "systemd")
            .unwrap_or(false)
}

fn maybe_reload(opts: &Options, root: &Root, needed: bool) -> bool {
    if !needed || opts.no_reload || !root.is_host() || !pid1_is_systemd() {
        return false;
    }
    std::process::Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Merge,
    Refresh,
}

/// `sysext merge`: fails if a hierarchy is already merged.
pub fn merge(opts: &Options) -> Result<MergeReport, Error> {
    apply(opts, Mode::Merge)
}

/// `sysext refresh`: re-merges the current set atomically; does nothing
/// when nothing that decides the result changed; unmerges when no image is
/// left.
pub fn refresh(opts: &Options) -> Result<MergeReport, Error> {
    apply(opts, Mode::Refresh)
}

fn apply(opts: &Options, mode: Mode) -> Result<MergeReport, Error> {
    require_root(if mode == Mode::Merge {
        "merge"
    } else {
        "refresh"
    })?;
    let root =
        Root::open(&opts.root).map_err(io_ctx(format!("opening root {}", opts.root.display())))?;
    // Shared with `sysext update` (H8): serialises with updates; taken first.
    let _update_lock =
        crate::update::lock::acquire(&opts.root).map_err(io_ctx("taking the sysext lock"))?;
    let _lock = RunLock::acquire(&opts.run_dir)?;
    let policy = verify::load_policy(&root, opts.policy)?;
    let disc = discover(&root).map_err(io_ctx("discovering extension images"))?;
    let host = HostRelease::load(&root)?;
    let fp = fingerprint(opts, &root, &disc, &host, &policy);
    let current = current_state(&root, &opts.hierarchies)?;

    let mut report = MergeReport {
        action: Action::Merged,
        extensions: Vec::new(),
        hierarchies: Vec::new(),
        images: Vec::new(),
        masked: disc.masked.clone(),
        skipped: disc.skipped.clone(),
        policy: policy.clone(),
        unmerged: Vec::new(),
        reloaded_manager: false,
    };

    if mode == Mode::Merge {
        if let Some(c) = current.iter().find(|c| c.merged) {
            return Err(Error::AlreadyMerged(c.hierarchy.clone()));
        }
    } else {
        let merged: Vec<&Current> = current.iter().filter(|c| c.merged).collect();
        if !merged.is_empty()
            && merged
                .iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.fingerprint == fp))
        {
            if let Some(s) = merged.first().and_then(|c| c.state.as_ref()) {
                report.images = s.images.clone();
                report.extensions = s
                    .images
                    .iter()
                    .filter(|i| i.outcome == Outcome::Merged)
                    .map(|i| i.name.clone())
                    .collect();
            }
            report.action = Action::Unchanged;
            return Ok(report);
        }
        if merged.is_empty() && disc.images.is_empty() {
            report.action = Action::NothingToMerge;
            return Ok(report);
        }
    }
    let old_reload = current
        .iter()
        .filter_map(|c| c.state.as_ref())
        .flat_map(|s| s.images.iter())
        .any(|i| i.reload_manager && i.outcome == Outcome::Merged);

    // --- staging namespace ------------------------------------------------
    // Staging runs on a thread of its own that enters a private mount
    // namespace and ends with it; this thread never leaves the original
    // namespace. Rayon's pool (used for hashing) is started here first so
    // that its threads do not live in, and keep alive, the staging namespace.
    let _ = rayon::current_num_threads();
    let staged = std::thread::scope(|s| {
        s.spawn(|| -> Result<(Staged, PathBuf), Error> {
            crate::ns::enter_staging_namespace()
                .map_err(io_ctx("entering a private mount namespace"))?;
            let ws = Workspace::create(&opts.run_dir)?;
            let backend = verify::select_backend(opts.backend);
            let r = stage(
                opts,
                &root,
                &disc,
                &host,
                &policy,
                backend.as_ref(),
                &ws,
                &fp,
            )?;
            Ok((r, ws.dir))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Io {
                context: "staging".into(),
                source: io::Error::other("the staging thread panicked"),
            })
        })
    });
    let ws_dir = opts.run_dir.join(format!("staging.{}", std::process::id()));
    let _ = std::fs::remove_dir(&ws_dir);
    let ((images, names, built), _) = staged?;
    report.images = images;
    report.extensions = names.clone();

    // --- original namespace ------------------------------------------------
    let new_reload = report
        .images
        .iter()
        .any(|i| i.reload_manager && i.outcome == Outcome::Merged);
    if names.is_empty() {
        report.action = Action::NothingToMerge;
        if mode == Mode::Refresh {
            for c in &current {
                if unmount_all_ours(&c.target)? {
                    report.unmerged.push(c.hierarchy.clone());
                }
            }
        }
        report.reloaded_manager =
            maybe_reload(opts, &root, old_reload && !report.unmerged.is_empty());
        return Ok(report);
    }
    for c in &current {
        match built.iter().find(|b| b.hierarchy == c.hierarchy) {
            Some(b) => {
                let swap = attach(b, &c.target)?;
                report.hierarchies.push(HierarchyReport {
                    hierarchy: c.hierarchy.clone(),
                    swap,
                    layers: b.layers.clone(),
                });
            }
            None => {
                if unmount_all_ours(&c.target)? {
                    report.hierarchies.push(HierarchyReport {
                        hierarchy: c.hierarchy.clone(),
                        swap: Swap::Unmerged,
                        layers: Vec::new(),
                    });
                }
            }
        }
    }
    report.reloaded_manager = maybe_reload(opts, &root, old_reload || new_reload);
    Ok(report)
}

type Staged = (Vec<ImageReport>, Vec<String>, Vec<Built>);

#[allow(clippy::too_many_arguments)]
fn stage(
    opts: &Options,
    root: &Root,
    disc: &Discovery,
    host: &HostRelease,
    policy: &EffectivePolicy,
    backend: &dyn verify::VerityBackend,
    ws: &Workspace,
    fp: &str,
) -> Result<Staged, Error> {
    let mut reports = Vec::new();
    let mut prepared: Vec<Prepared> = Vec::new();
    for img in &disc.images {
        let mut report = new_report(img);
        match prepare_one(
            ws,
            img,
            policy.policy,
            host,
            opts,
            root,
            backend,
            &mut report,
        ) {
            Ok((dir, loop_dev)) => prepared.push(Prepared {
                name: img.name.clone(),
                dir,
                report: report.clone(),
                _loop: loop_dev,
            }),
            Err(r) => {
                report.outcome = Outcome::Refused {
                    stage: r.stage,
                    reason: r.reason,
                };
                reports.push(report);
            }
        }
    }
    // Stack order: UAPI version order of the names, lowest first.
    prepared.sort_by(|a, b| {
        sysupdate::version::compare(a.name.as_str(), b.name.as_str())
            .then_with(|| a.name.as_str().cmp(b.name.as_str()))
    });
    let names: Vec<String> = prepared.iter().map(|p| p.name.to_string()).collect();
    reports.extend(prepared.iter().map(|p| p.report.clone()));
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    if prepared.is_empty() {
        return Ok((reports, names, Vec::new()));
    }
    // Reveal the host's hierarchies in this namespace only.
    for h in &opts.hierarchies {
        let target = root
            .resolve_nonexistent(h)
            .map_err(io_ctx(format!("resolving {}", root.join(h).display())))?;
        unmount_all_ours(&target)?;
    }
    let stack: Vec<&Prepared> = prepared.iter().collect();
    let mut built = Vec::new();
    let mut metas = Vec::new();
    for h in &opts.hierarchies {
        if let Some((b, meta)) = build_hierarchy(ws, root, h, &stack, &names)? {
            built.push(b);
            metas.push(meta);
        }
    }
    let state = MergeState {
        tool: format!("sysext-forge {}", env!("CARGO_PKG_VERSION")),
        fingerprint: fp.to_string(),
        merged_at_usec: now_usec(),
        policy: policy.policy,
        images: reports.clone(),
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Io {
        context: "serialising the merge state".into(),
        source: io::Error::other(e),
    })?;
    for meta in &metas {
        let p = meta.join(MARKER_DIR).join(STATE_FILE);
        std::fs::write(&p, &json).map_err(io_ctx(format!("writing {}", p.display())))?;
        // The merged tree's mtime marks when the merge was made.
        rustix::fs::utimensat(
            rustix::fs::CWD,
            meta,
            &rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno_ctx(format!("touching {}", meta.display())))?;
    }
    Ok((reports, names, built))
}

/// Result of `unmerge`.
#[derive(Debug, Clone, Serialize)]
pub struct UnmergeReport {
    pub unmerged: Vec<String>,
    pub reloaded_manager: bool,
}

/// `sysext unmerge`: detaches every merged overlay (ours or
/// systemd-sysext's) from the hierarchies.
pub fn unmerge(opts: &Options) -> Result<UnmergeReport, Error> {
    require_root("unmerge")?;
    let root =
        Root::open(&opts.root).map_err(io_ctx(format!("opening root {}", opts.root.display())))?;
    // Shared with `sysext update` (H8): serialises with updates; taken first.
    let _update_lock =
        crate::update::lock::acquire(&opts.root).map_err(io_ctx("taking the sysext lock"))?;
    let _lock = RunLock::acquire(&opts.run_dir)?;
    let current = current_state(&root, &opts.hierarchies)?;
    let mut reload = false;
    let mut out = UnmergeReport {
        unmerged: Vec::new(),
        reloaded_manager: false,
    };
    for c in &current {
        if !c.merged {
            continue;
        }
        reload |= match &c.state {
            Some(s) => s
                .images
                .iter()
                .any(|i| i.reload_manager && i.outcome == Outcome::Merged),
            None => merged_tree_wants_reload(&c.target),
        };
        if unmount_all_ours(&c.target)? {
            out.unmerged.push(c.hierarchy.clone());
        }
    }
    out.reloaded_manager = maybe_reload(opts, &root, reload);
    Ok(out)
}

/// For trees merged by systemd-sysext: does any merged extension's
/// extension-release ask for a manager reload?
fn merged_tree_wants_reload(tree: &Path) -> bool {
    let Ok(names) = mounts::read_extensions_marker(tree) else {
        return false;
    };
    names.iter().any(|n| {
        let Ok(n) = ImageName::new(n.as_str()) else {
            return false;
        };
        // `tree` is /usr: the release files are at lib/extension-release.d.
        let p = tree
            .join("lib/extension-release.d")
            .join(format!("extension-release.{n}"));
        crate::osrelease::read(&p)
            .map(|f| wants_manager_reload(&f))
            .unwrap_or(false)
    })
}

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct HierarchyStatus {
    pub hierarchy: String,
    /// systemd prints `"none"` for an unmerged hierarchy; so do we.
    pub extensions: serde_json::Value,
    /// When the merge was made (µs since the epoch), like systemd's `since`.
    pub since: Option<u64>,
    /// `sysext-forge` when we merged it (we then know how each image was
    /// verified), `systemd-sysext` otherwise.
    pub merged_by: Option<String>,
    pub images: Vec<ImageReport>,
}

/// The report of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub hierarchies: Vec<HierarchyStatus>,
    pub policy: EffectivePolicy,
    pub kernel_dm_verity: bool,
}

/// `sysext status`: per hierarchy, the merged extensions and since when.
pub fn status(opts: &Options) -> Result<StatusReport, Error> {
    let root =
        Root::open(&opts.root).map_err(io_ctx(format!("opening root {}", opts.root.display())))?;
    let policy = verify::load_policy(&root, opts.policy)?;
    let mut rows = Vec::new();
    for h in &opts.hierarchies {
        let target = match root.resolve(h) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_ctx(format!("resolving {}", root.join(h).display()))(e)),
        };
        let merged =
            is_merged_tree(&target).map_err(io_ctx(format!("checking {}", target.display())))?;
        if !merged {
            rows.push(HierarchyStatus {
                hierarchy: h.clone(),
                extensions: serde_json::Value::String("none".into()),
                since: None,
                merged_by: None,
                images: Vec::new(),
            });
            continue;
        }
        let names = mounts::read_extensions_marker(&target).map_err(io_ctx(format!(
            "reading {}/{MARKER_DIR}/extensions",
            target.display()
        )))?;
        let since = std::fs::metadata(&target)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as u64);
        let state = read_state(&target);
        rows.push(HierarchyStatus {
            hierarchy: h.clone(),
            extensions: serde_json::json!(names),
            since,
            merged_by: Some(
                if state.is_some() {
                    "sysext-forge"
                } else {
                    "systemd-sysext"
                }
                .into(),
            ),
            images: state
                .map(|s| {
                    s.images
                        .into_iter()
                        .filter(|i| i.outcome == Outcome::Merged)
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    rows.sort_by(|a, b| a.hierarchy.cmp(&b.hierarchy));
    Ok(StatusReport {
        hierarchies: rows,
        policy,
        kernel_dm_verity: verify::kernel_dm_verity_present(),
    })
}

/// One row of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub path: PathBuf,
    /// Modification time (µs), for raw images, like systemd's `time`.
    pub time: Option<u64>,
    pub target: PathBuf,
    pub format: Option<String>,
    pub verity: bool,
    pub signed: bool,
}

/// The report of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    pub images: Vec<ListEntry>,
    pub masked: Vec<Masked>,
    pub skipped: Vec<Skipped>,
}

/// `sysext list`: the images found, with type, path and verity facts.
pub fn list(opts: &Options) -> Result<ListReport, Error> {
    let root =
        Root::open(&opts.root).map_err(io_ctx(format!("opening root {}", opts.root.display())))?;
    let disc = discover(&root).map_err(io_ctx("discovering extension images"))?;
    let mut images = Vec::new();
    for img in &disc.images {
        let mut e = ListEntry {
            name: img.name.to_string(),
            kind: img.kind.as_str().to_string(),
            path: img.path.clone(),
            time: img
                .mtime
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_micros() as u64),
            target: img.target.clone(),
            format: None,
            verity: false,
            signed: false,
        };
        if img.kind != EntryKind::Directory {
            if let Ok(o) = open_image(&img.target, &img.sidecars, img.kind == EntryKind::Block) {
                e.format = Some(o.format.as_str().to_string());
                e.verity = o.material.is_some();
                e.signed = o.material.as_ref().is_some_and(|m| m.signature.is_some());
            } else if let Ok(f) = File::open(&img.target) {
                e.format = Format::probe(&f).ok().map(|f| f.as_str().to_string());
            }
        }
        images.push(e);
    }
    Ok(ListReport {
        images,
        masked: disc.masked,
        skipped: disc.skipped,
    })
}

/// The report of `verify IMAGE`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub path: PathBuf,
    pub format: String,
    pub root_hash: String,
    pub root_hash_origin: String,
    pub signer: Option<String>,
    pub signer_fingerprint: Option<String>,
    pub policy: EffectivePolicy,
    pub data_bytes: u64,
    pub verification: VerityMode,
}

/// `sysext verify IMAGE`: checks an image file completely in user space —
/// policy, signature against `verity.d` under `--root`, and every data
/// block against the root hash — without mounting anything.
pub fn verify_image(opts: &Options, image: &Path) -> Result<VerifyReport, Error> {
    let root =
        Root::open(&opts.root).map_err(io_ctx(format!("opening root {}", opts.root.display())))?;
    let policy = verify::load_policy(&root, opts.policy)?;
    let path =
        std::fs::canonicalize(image).map_err(io_ctx(format!("opening {}", image.display())))?;
    let md = std::fs::metadata(&path).map_err(io_ctx(format!("stat {}", path.display())))?;
    use std::os::unix::fs::FileTypeExt;
    let block = md.file_type().is_block_device();
    let mut sidecars = crate::discover::Sidecars::find(image);
    if sidecars.is_empty() {
        sidecars = crate::discover::Sidecars::find(&path);
    }
    let opened = open_image(&path, &sidecars, block).map_err(|(_, reason)| Error::Verify {
        path: path.clone(),
        source: Box::new(VerifyError::Incomplete(reason)),
    })?;
    let decision = verify::decide(
        policy.policy,
        opened.material.as_ref(),
        &path.display().to_string(),
        || signing::pkcs7::TrustedCerts::from_verity_d(root.path()),
    )
    .map_err(|source| Error::Verify {
        path: path.clone(),
        source: Box::new(source),
    })?;
    let Some(material) = opened.material else {
        return Err(Error::Unsupported(path));
    };
    let data = signing::verity::ByteRange::new(opened.data.offset, opened.data.size_limit);
    verify::verify_data(&opened.file, data, &material).map_err(|source| Error::Verify {
        path: path.clone(),
        source: Box::new(source),
    })?;
    Ok(VerifyReport {
        path,
        format: opened.fs_format.as_str().to_string(),
        root_hash: material.root_hash.to_hex(),
        root_hash_origin: material.root_hash_origin,
        signer: decision.signer,
        signer_fingerprint: decision.signer_fingerprint,
        policy,
        data_bytes: data.len,
        verification: VerityMode::UserSpace,
    })
}
