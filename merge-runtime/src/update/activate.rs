//! Installing and activating a chosen version: make room and download
//! each file (resuming, digest-checked), check the image under the node's
//! policy, rename it into place, then under the main lock journal the
//! activation, flip the links, refresh, make sure the new image was
//! merged, run the health check, and roll back on failure; finally vacuum.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sysupdate::candidates::Candidate;
use sysupdate::Version;

use crate::discover::Sidecars;
use crate::lock::Lock;
use crate::root::fsync_dir;
use crate::runtime::{MergeReport, Outcome as MergeOutcome};

use super::context::{now_usec, Ctx};
use super::error::{io_ctx, ComponentError, RollbackCause};
use super::feed;
use super::health;
use super::report::{ComponentReport, Event, Outcome};
use super::revert::{finalize, refresh, roll_back, set_links};
use super::state::{Activation, LinkChange};
use super::target::{self, find_link, Target};

/// A file of the new version, ready to be put in place.
struct Staged {
    target_idx: usize,
    final_path: PathBuf,
    /// `Some` when downloaded now (to be renamed), `None` when reused.
    partial: Option<PathBuf>,
}

/// Paths that vacuuming must keep: what each link points at now, and the
/// previous instance recorded for it.
fn protected_paths(ctx: &Ctx, name: &str, t: &Target) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(i) = t.current(&ctx.root) {
        out.push(i.path);
    }
    if let Some(l) = &t.link {
        if let Some(prev) = ctx.state.component(name).previous.get(&l.path) {
            if let Some(p) = l.resolve_text(&ctx.root, prev) {
                out.push(p);
            }
        }
    }
    out
}

/// Installs `version` (steps 4 to 8 of the module doc of `update`).
pub(crate) fn install_and_activate(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    lists: &[Vec<Candidate>],
    version: &Version,
    rep: &mut ComponentReport,
) -> Result<Outcome, ComponentError> {
    let mut staged = Vec::new();
    for (idx, t) in targets.iter().enumerate() {
        let cand = lists[idx]
            .iter()
            .find(|c| c.version.uapi_eq(version))
            .ok_or_else(|| ComponentError::Vanished(version.clone()))?;
        staged.push(fetch(ctx, name, idx, t, cand, rep)?);
    }
    check_images(ctx, name, targets, &staged, version)?;
    install(ctx, name, targets, &staged)?;
    let outcome = activate(ctx, name, targets, &staged, version)?;
    if outcome == Outcome::Installed || outcome == Outcome::Staged {
        vacuum(ctx, name, targets, rep);
    }
    Ok(outcome)
}

/// Makes room, then reuses the installed file or downloads it (step 4).
fn fetch(
    ctx: &mut Ctx,
    name: &str,
    idx: usize,
    t: &Target,
    cand: &Candidate,
    rep: &mut ComponentReport,
) -> Result<Staged, ComponentError> {
    let final_name = t.final_name(cand).map_err(ComponentError::FinalName)?;
    let final_path = t.dir.join(&final_name);
    let partial = t.partial_path(&final_name);
    t.ensure_dir()
        .map_err(io_ctx(format!("creating {}", t.dir.display())))?;
    let mut protected = protected_paths(ctx, name, t);
    // The file about to be installed may be there already.
    protected.push(final_path.clone());
    let cstate = ctx.state.component(name);
    let removed = t
        .vacuum(
            t.transfer.instances_max.saturating_sub(1),
            &protected,
            &|v| cstate.is_failed(v),
            Some(&partial),
        )
        .map_err(io_ctx(format!("vacuuming {}", t.dir.display())))?;
    if !removed.is_empty() {
        ctx.emit(Event::Vacuumed {
            component: name.to_string(),
            removed: removed.clone(),
        });
        rep.removed.extend(removed);
    }
    // Damaged or different: download again, replace atomically.
    if final_path.is_file() && feed::sha256_file(&final_path).is_ok_and(|d| d == cand.digest) {
        ctx.emit(Event::Reused {
            component: name.to_string(),
            file: final_path.clone(),
        });
        return Ok(Staged {
            target_idx: idx,
            final_path,
            partial: None,
        });
    }
    let url = feed::file_url(&t.transfer.source_url, cand.name.as_str());
    let resume_from = std::fs::symlink_metadata(&partial)
        .map(|m| m.len())
        .unwrap_or(0);
    ctx.emit(Event::DownloadStart {
        component: name.to_string(),
        url: url.clone(),
        file: partial.clone(),
        resume_from,
    });
    let obs = &mut *ctx.obs;
    let limit = ctx.opts.max_download_size;
    let d = ctx
        .feed
        .download(&url, &partial, &cand.digest, limit, &mut |p| {
            obs(&Event::DownloadProgress {
                component: name.to_string(),
                file: final_name.clone(),
                bytes: p.done,
                total: p.total,
            })
        })?;
    rep.downloaded_bytes += d.transferred;
    ctx.emit(Event::DownloadDone {
        component: name.to_string(),
        file: final_name.clone(),
        bytes: d.bytes,
        transferred: d.transferred,
    });
    Ok(Staged {
        target_idx: idx,
        final_path,
        partial: Some(partial),
    })
}

/// Checks each image under the node's policy before it can become
/// current (step 5). Sidecars being installed with it are used. A refused
/// image is deleted and its version recorded as failed.
fn check_images(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    staged: &[Staged],
    version: &Version,
) -> Result<(), ComponentError> {
    for s in staged {
        if targets[s.target_idx].link.is_none() {
            continue;
        }
        let file = s.partial.as_ref().unwrap_or(&s.final_path);
        let sidecars = sidecars_for(&s.final_path, staged);
        let check = match target::verify_image(&ctx.opts.runtime, file, &sidecars) {
            Ok(c) => {
                ctx.emit(Event::ImageVerified {
                    component: name.to_string(),
                    file: s.final_path.clone(),
                    policy: c.policy.to_string(),
                    signer: c.decision.signer.clone(),
                    verified_bytes: c.verified_bytes,
                });
                continue;
            }
            Err(e) => e,
        };
        for s in staged {
            if let Some(p) = &s.partial {
                let _ = std::fs::remove_file(p);
            }
        }
        let mut recorded = String::new();
        if let target::ImageCheckError::Refused(reason) = &check {
            // The same bytes would be refused again: remember the
            // version so timer runs do not download it over and
            // over (`--retry-failed` tries it again, e.g. after
            // the node's policy or verity.d changed).
            let mut cstate = ctx.state.component(name);
            cstate.mark_failed(
                version,
                &format!("refused by this node's image policy: {reason}"),
                now_usec(),
            );
            recorded = match ctx.state.put(name, cstate) {
                Ok(()) => format!(
                    "; version {version} is recorded as failed and skipped by later updates (--retry-failed tries it again)"
                ),
                Err(e) => format!(
                    "; could not record it as failed: {}",
                    crate::chain::text(&e)
                ),
            };
        }
        return Err(ComponentError::ImageRefused {
            file: s.final_path.clone(),
            version: version.clone(),
            check,
            recorded,
        });
    }
    Ok(())
}

/// Sets the mode, fsyncs and renames each downloaded file into place
/// (step 6).
fn install(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    staged: &[Staged],
) -> Result<(), ComponentError> {
    for s in staged {
        let t = &targets[s.target_idx];
        let Some(p) = &s.partial else {
            continue;
        };
        target::set_mode(p, t.transfer.mode)
            .map_err(io_ctx(format!("setting the mode of {}", p.display())))?;
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(io_ctx(format!("syncing {}", p.display())))?;
        std::fs::rename(p, &s.final_path)
            .map_err(io_ctx(format!("renaming {} into place", p.display())))?;
        fsync_dir(&t.dir).map_err(io_ctx(format!("syncing {}", t.dir.display())))?;
        ctx.emit(Event::Installed {
            component: name.to_string(),
            file: s.final_path.clone(),
        });
    }
    Ok(())
}

/// Under the main lock: journal, flip, then [`finish_activation`]
/// (step 7).
fn activate(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    staged: &[Staged],
    version: &Version,
) -> Result<Outcome, ComponentError> {
    let lock = ctx.main_lock()?;
    let mut links = Vec::new();
    for s in staged {
        if let Some(l) = &targets[s.target_idx].link {
            let io = io_ctx(format!("reading {}", l.path));
            let old = l.read().map_err(io)?;
            let new = l.text_for(&s.final_path).map_err(io_ctx(format!(
                "linking {} to {}",
                l.path,
                s.final_path.display()
            )))?;
            links.push(LinkChange {
                link: l.path.clone(),
                old,
                new,
            });
        }
    }
    let act = Activation {
        version: version.clone(),
        links,
        check: ctx.opts.check.clone(),
        check_timeout_sec: ctx.opts.check_timeout.as_secs().max(1),
        started_usec: now_usec(),
    };
    let mut cstate = ctx.state.component(name);
    cstate.activating = Some(act.clone());
    ctx.state.put(name, cstate)?;
    ctx.emit(Event::JournalWritten {
        component: name.to_string(),
        version: version.to_string(),
    });
    set_links(ctx, name, targets, &act, true)?;
    finish_activation(ctx, name, targets, &act, &lock)
}

/// Vacuums each target to `InstancesMax` (step 8); failures are warnings.
fn vacuum(ctx: &mut Ctx, name: &str, targets: &[Target], rep: &mut ComponentReport) {
    for t in targets {
        let protected = protected_paths(ctx, name, t);
        let cstate = ctx.state.component(name);
        match t.vacuum(
            t.transfer.instances_max,
            &protected,
            &|v| cstate.is_failed(v),
            None,
        ) {
            Ok(removed) if !removed.is_empty() => {
                ctx.emit(Event::Vacuumed {
                    component: name.to_string(),
                    removed: removed.clone(),
                });
                rep.removed.extend(removed);
            }
            Ok(_) => {}
            Err(e) => rep.warnings.push(format!("vacuum: {e}")),
        }
    }
}

/// Sidecars of the image installed as `image` among the staged files.
fn sidecars_for(image: &Path, staged: &[Staged]) -> Sidecars {
    let stem = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".raw").unwrap_or(&stem).to_string();
    let find = |suffixes: &[&str]| {
        staged.iter().find_map(|s| {
            let n = s.final_path.file_name()?.to_string_lossy().into_owned();
            suffixes
                .iter()
                .any(|suf| n == format!("{stem}{suf}"))
                .then(|| s.partial.clone().unwrap_or_else(|| s.final_path.clone()))
        })
    };
    Sidecars {
        roothash: find(&[".roothash", ".usrhash"]),
        verity: find(&[".verity"]),
        signature: find(&[".roothash.p7s", ".usrhash.p7s"]),
    }
}

/// After the links point at the new version: refresh, make sure the new
/// image was merged, run the health check; roll back on failure. `held`
/// is the main lock.
pub(crate) fn finish_activation(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: &Activation,
    held: &Lock,
) -> Result<Outcome, ComponentError> {
    if !ctx.opts.refresh {
        finalize(ctx, name, act)?;
        return Ok(Outcome::Staged);
    }
    let report = match refresh(ctx, name, held) {
        Ok(r) => r,
        Err(source) => {
            // Not the image's fault as far as we know: put the old links
            // back without recording the version as failed.
            set_links(ctx, name, targets, act, false)?;
            let again = refresh(ctx, name, held).err().map(Box::new);
            let mut c = ctx.state.component(name);
            c.activating = None;
            ctx.state.put(name, c)?;
            return Err(ComponentError::Refresh {
                source: Box::new(source),
                again,
            });
        }
    };
    if let Some(cause) = not_merged(&report, targets, act) {
        return Err(roll_back(ctx, name, targets, act, cause, held));
    }
    if let Some(check) = &act.check {
        ctx.emit(Event::CheckStart {
            component: name.to_string(),
            check: check.describe(),
        });
        let env = [
            ("SYSEXT_ROOT", ctx.root.path().display().to_string()),
            ("SYSEXT_COMPONENT", name.to_string()),
            ("SYSEXT_VERSION", act.version.to_string()),
        ];
        let timeout = Duration::from_secs(act.check_timeout_sec.max(1));
        if let Err(reason) = health::run(check, &env, timeout) {
            ctx.emit(Event::CheckFailed {
                component: name.to_string(),
                reason: reason.clone(),
            });
            let cause = RollbackCause::HealthCheck(reason);
            return Err(roll_back(ctx, name, targets, act, cause, held));
        }
        ctx.emit(Event::CheckPassed {
            component: name.to_string(),
        });
    }
    finalize(ctx, name, act)?;
    Ok(Outcome::Installed)
}

/// Why the refresh did not merge the new image of a link, if it did not:
/// refused by the merge, or (for a link in a search directory that the
/// admin did not mask) missing from the merged images.
fn not_merged(report: &MergeReport, targets: &[Target], act: &Activation) -> Option<RollbackCause> {
    for ch in &act.links {
        let Some(link) = find_link(targets, &ch.link) else {
            continue;
        };
        let ext = link.extension_name();
        match report.images.iter().find(|i| i.name == ext) {
            Some(img) => {
                if let MergeOutcome::Refused { stage, reason } = &img.outcome {
                    return Some(RollbackCause::MergeRefused {
                        stage: stage.clone(),
                        reason: reason.clone(),
                    });
                }
            }
            None => {
                let searched = Path::new(&link.path).parent().is_some_and(|d| {
                    crate::discover::SEARCH_DIRS
                        .iter()
                        .any(|s| Path::new(s) == d)
                });
                let masked = report.masked.iter().any(|m| m.name.to_string() == ext);
                if searched && !masked {
                    let why = report
                        .skipped
                        .iter()
                        .find(|s| s.path.file_name() == link.host.file_name())
                        .map(|s| s.reason.clone())
                        .unwrap_or_else(|| "it is not among the merged images".into());
                    return Some(RollbackCause::NotMerged {
                        link: link.path.clone(),
                        why,
                    });
                }
            }
        }
    }
    None
}
