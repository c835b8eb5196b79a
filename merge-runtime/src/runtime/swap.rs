//! Building the merged trees and putting them in place: per hierarchy the
//! read-only overlay (`lowerdir=META:EXT_HIGHEST:…:EXT_LOWEST:HOST`) with
//! its marker, taken as a detached clone (`open_tree(OPEN_TREE_CLONE)`) in
//! the staging namespace; then, in the original namespace, the swap: on an
//! existing merge `move_mount(MOVE_MOUNT_BENEATH)` under the old overlay
//! and the old one detached, so `/usr` never lacks its extensions; and the
//! unmerge (detaching every merged overlay).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::mount::{
    move_mount, open_tree, unmount, MountFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

use sysupdate::extension::ImageName;

use crate::mounts::{self, is_merged_tree, MARKER_DIR};
use crate::root::{self, Root};

use super::error::{errno_ctx, io_ctx, RuntimeError};
use super::report::Swap;
use super::stage::{Prepared, Workspace};

/// A built overlay, detached, ready to be put in place.
pub struct Built {
    pub hierarchy: String,
    tree: OwnedFd,
    pub layers: Vec<PathBuf>,
}

pub fn build_hierarchy(
    ws: &Workspace,
    root: &Root,
    hierarchy: &str,
    stack: &[(ImageName, Prepared)],
    names: &[String],
) -> Result<Option<(Built, PathBuf)>, RuntimeError> {
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
    for (_, p) in stack.iter().rev() {
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
    let coptions = std::ffi::CString::new(options.clone()).map_err(|_| RuntimeError::Io {
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

pub fn unmount_all_ours(target: &Path) -> Result<bool, RuntimeError> {
    let mut any = false;
    while is_merged_tree(target).map_err(io_ctx(format!("checking {}", target.display())))? {
        unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
            .map_err(errno_ctx(format!("unmounting {}", target.display())))?;
        any = true;
    }
    Ok(any)
}

/// Moves the built tree onto `target`, on top of whatever is mounted there.
fn mount_on_top(built: &Built, target: &Path) -> Result<(), RuntimeError> {
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

pub fn attach(built: &Built, target: &Path) -> Result<Swap, RuntimeError> {
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
