//! Staging: the tmpfs workspace under the run directory (in the private
//! staging namespace), and mounting each image read-only into it after
//! its policy, signature and verity checks, then its extension-release
//! check. The decisions are [`super::plan`]'s; this module gathers the
//! facts and does the mounting. A refused image is unmounted and its loop
//! device detached right away.

use std::path::{Path, PathBuf};

use rustix::mount::{unmount, MountFlags, UnmountFlags};
use sysupdate::extension::ImageName;

use crate::discover::{Discovery, EntryKind, Image};
use crate::image::open_image;
use crate::loopdev::LoopDevice;
use crate::release::{self, HostRelease};
use crate::root::{self, Root};
use crate::verify::{self, Policy, VerityMode};

use super::error::{errno_ctx, io_ctx, RuntimeError};
use super::plan::{self, Plan, Refusal};
use super::report::{ImageReport, Outcome};

/// Our staging workspace: a directory under `run_dir` with a tmpfs on it
/// (in the staging namespace only).
pub struct Workspace {
    pub dir: PathBuf,
}

impl Workspace {
    /// The workspace directory of this process under `run_dir`.
    pub fn dir_in(run_dir: &Path) -> PathBuf {
        run_dir.join(format!("staging.{}", std::process::id()))
    }

    pub fn create(run_dir: &Path) -> Result<Workspace, RuntimeError> {
        let dir = Workspace::dir_in(run_dir);
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

    pub fn meta_dir(&self, hierarchy: &str) -> PathBuf {
        self.dir
            .join("meta")
            .join(hierarchy.trim_start_matches('/'))
    }

    pub fn overlay_dir(&self, hierarchy: &str) -> PathBuf {
        self.dir
            .join("overlay")
            .join(hierarchy.trim_start_matches('/'))
    }
}

/// An image that passed every check, mounted in the staging namespace.
pub struct Prepared {
    pub name: ImageName,
    pub dir: PathBuf,
    pub report: ImageReport,
    /// Kept until the overlays hold the filesystem; dropping it then only
    /// arms autoclear.
    _loop: Option<LoopDevice>,
}

/// What staging needs besides the image.
pub struct Context<'a> {
    pub ws: &'a Workspace,
    pub root: &'a Root,
    pub host: &'a HostRelease,
    pub policy: Policy,
    pub force: bool,
    pub backend: &'a dyn verify::VerityBackend,
}

fn mount_err(context: String) -> impl FnOnce(rustix::io::Errno) -> Refusal {
    move |e| Refusal::Mount {
        context,
        source: e.into(),
    }
}

/// Bind-mounts a directory image read-only at `dir`.
fn mount_directory(
    cx: &Context,
    img: &Image,
    dir: &Path,
    report: &mut ImageReport,
) -> Result<(), Refusal> {
    let certs = || signing::pkcs7::TrustedCerts::from_verity_d(cx.root.path());
    let what = format!("directory image {}", img.path.display());
    plan::admit_policy(cx.policy, None, &what, certs)?;
    rustix::mount::mount_bind(&img.target, dir)
        .map_err(mount_err(format!("bind-mounting {}", img.target.display())))?;
    rustix::mount::mount_remount(dir, MountFlags::BIND | MountFlags::RDONLY, "").map_err(|e| {
        let _ = unmount(dir, UnmountFlags::DETACH);
        mount_err(format!("making {} read-only", dir.display()))(e)
    })?;
    report.verification = VerityMode::None;
    Ok(())
}

/// Checks a raw image or block device, attaches it read-only (through
/// verity when it has the material) and mounts it at `dir`.
fn mount_raw(
    cx: &Context,
    img: &Image,
    dir: &Path,
    report: &mut ImageReport,
) -> Result<LoopDevice, Refusal> {
    let what = img.path.display().to_string();
    let certs = || signing::pkcs7::TrustedCerts::from_verity_d(cx.root.path());
    let opened = open_image(&img.target, &img.sidecars, img.kind == EntryKind::Block)?;
    report.format = Some(opened.format.as_str().to_string());
    let decision = plan::admit_policy(cx.policy, opened.material.as_ref(), &what, certs)?;
    report.signer = decision.signer;
    report.root_hash = opened.material.as_ref().map(|m| m.root_hash.to_hex());
    let dev = LoopDevice::attach(&opened.file, opened.data, &img.target).map_err(|source| {
        Refusal::Mount {
            context: format!("setting up a loop device for {}", img.target.display()),
            source,
        }
    })?;
    let device = match &opened.material {
        Some(m) => {
            let act = cx.backend.activate(&dev, m).map_err(Refusal::Verity)?;
            report.verification = act.mode;
            act.device
        }
        None => {
            report.verification = VerityMode::None;
            dev.path().to_path_buf()
        }
    };
    let fs = opened
        .fs_format
        .fs_type()
        .ok_or_else(|| Refusal::NotAFilesystem { what: what.clone() })?;
    rustix::mount::mount(
        &device,
        dir,
        fs,
        MountFlags::RDONLY | MountFlags::NODEV,
        None,
    )
    .map_err(mount_err(format!(
        "mounting {what} ({fs}) from {}",
        device.display()
    )))?;
    Ok(dev)
}

/// The extension-release check of the image mounted at `dir`; returns
/// whether it asks for a service-manager reload.
fn check_release(cx: &Context, img: &Image, dir: &Path) -> Result<bool, Refusal> {
    let found = release::find_extension_release(dir, &img.name).map_err(|source| {
        Refusal::ReleaseLookup {
            what: img.path.display().to_string(),
            source,
        }
    })?;
    let contains_os_release = !cx.force && release::contains_os_release(dir).unwrap_or(false);
    plan::admit_release(
        found.as_ref().map(|f| &f.file).map_err(String::as_str),
        contains_os_release,
        cx.host,
        cx.force,
    )
}

/// Mounts one image at its place in the workspace, or says why not.
fn prepare_one(
    cx: &Context,
    img: &Image,
    report: &mut ImageReport,
) -> Result<(PathBuf, Option<LoopDevice>), Refusal> {
    let dir = cx.ws.ext_dir(&img.name);
    root::mkdir_p(&dir, 0o700).map_err(|source| Refusal::Mount {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let loop_dev = match img.kind {
        EntryKind::Directory => {
            mount_directory(cx, img, &dir, report)?;
            None
        }
        EntryKind::Raw | EntryKind::Block => Some(mount_raw(cx, img, &dir, report)?),
    };
    // From here on the image is mounted at `dir`.
    match check_release(cx, img, &dir) {
        Ok(reload) => {
            report.reload_manager = reload;
            Ok((dir, loop_dev))
        }
        Err(r) => {
            let _ = unmount(&dir, UnmountFlags::empty())
                .or_else(|_| unmount(&dir, UnmountFlags::DETACH));
            Err(r)
        }
    }
}

/// Checks and mounts every discovered image. Returns the plan (merged
/// images in stack order) and the report of every image, sorted by name.
pub fn stage_images(cx: &Context, disc: &Discovery) -> (Plan<Prepared>, Vec<ImageReport>) {
    let mut reports = Vec::new();
    let results = disc.images.iter().map(|img| {
        let mut report = ImageReport::new(img);
        let r = prepare_one(cx, img, &mut report).map(|(dir, loop_dev)| Prepared {
            name: img.name.clone(),
            dir,
            report: report.clone(),
            _loop: loop_dev,
        });
        if let Err(refusal) = &r {
            report.outcome = Outcome::Refused {
                stage: refusal.stage(),
                reason: refusal.reason(),
            };
            reports.push(report);
        }
        (img.name.clone(), r)
    });
    let plan = Plan::new(results.collect::<Vec<_>>());
    reports.extend(plan.merge.iter().map(|(_, p)| p.report.clone()));
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    (plan, reports)
}
