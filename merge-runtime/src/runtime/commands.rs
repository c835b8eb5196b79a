//! The commands that change the merge — `merge`, `refresh` (also with the
//! main lock already held by the caller: [`refresh_locked`]) and `unmerge`
//! — orchestrating the plan, the staging namespace, the swap, the state
//! and the service-manager reload.
//!
//! How a merge or refresh runs:
//! 1. discover images, load the policy and the host's os-release;
//! 2. (refresh) stop if the fingerprint of everything that decides the
//!    result equals the one recorded in the merged trees;
//! 3. enter a private, slave copy of the mount namespace; mount a tmpfs
//!    workspace under the run directory;
//! 4. per image: policy and signature check, read-only loop device,
//!    verity check, read-only mount, extension-release lookup and
//!    validation; a refused image is unmounted and its loop device
//!    detached right away, the others go on;
//! 5. unmount the current overlays *in the staging namespace only*, so the
//!    host's own `/usr` is visible to stack under the new overlay;
//! 6. per hierarchy: write the marker, mount the overlay, record `dev`,
//!    and take a detached clone of it;
//! 7. return to the original namespace and put each clone in place with
//!    no gap (see [`super::swap`]).

use std::path::{Path, PathBuf};

use sysupdate::extension::{wants_manager_reload, ImageName};

use crate::discover::{discover, Discovery};
use crate::lock::{self, Lock};
use crate::mounts;
use crate::release::HostRelease;
use crate::root::Root;
use crate::verify::{self, EffectivePolicy};

use super::error::{io_ctx, require_root, root_err, RuntimeError};
use super::options::Options;
use super::plan::{self, Mode, Start};
use super::report::{
    wants_reload, Action, HierarchyReport, ImageReport, MergeReport, Outcome, Swap, UnmergeReport,
};
use super::stage::{self, Workspace};
use super::state::{self, current_state, fingerprint, Current, MergeState};
use super::swap::{self, Built};

/// `sysext merge`: fails if a hierarchy is already merged.
pub fn merge(opts: &Options) -> Result<MergeReport, RuntimeError> {
    run(opts, Mode::Merge, None)
}

/// `sysext refresh`: re-merges the current set atomically; does nothing
/// when nothing that decides the result changed; unmerges when no image is
/// left.
pub fn refresh(opts: &Options) -> Result<MergeReport, RuntimeError> {
    run(opts, Mode::Refresh, None)
}

/// [`refresh`] for a caller that already holds the main lock of
/// `opts.root` (`held`, from [`lock::acquire_main`]): an update's
/// activation, which must not let another merge in between.
pub fn refresh_locked(opts: &Options, held: &Lock) -> Result<MergeReport, RuntimeError> {
    run(opts, Mode::Refresh, Some(held))
}

fn run(opts: &Options, mode: Mode, held: Option<&Lock>) -> Result<MergeReport, RuntimeError> {
    require_root(match mode {
        Mode::Merge => "merge",
        Mode::Refresh => "refresh",
    })?;
    let root = Root::open(&opts.root).map_err(root_err(&opts.root))?;
    // Shared with `sysext update`: serialises with updates; taken first.
    let _main = match held {
        Some(_) => None,
        None => Some(lock::acquire(&opts.root)?),
    };
    let _run = lock::acquire_run_dir(&opts.run_dir)?;
    apply(opts, mode, &root)
}

fn apply(opts: &Options, mode: Mode, root: &Root) -> Result<MergeReport, RuntimeError> {
    let policy = verify::load_policy(root, opts.policy)?;
    let disc = discover(root).map_err(RuntimeError::Discover)?;
    let host = HostRelease::load(root)?;
    let fp = fingerprint(opts, root, &disc, &host, &policy);
    let current = current_state(root, &opts.hierarchies)?;
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
    match plan::start(mode, &current, &fp, !disc.images.is_empty()) {
        Start::AlreadyMerged(h) => return Err(RuntimeError::AlreadyMerged(h.to_string())),
        Start::Unchanged(state) => {
            if let Some(s) = state {
                report.images = s.images.clone();
                report.extensions = merged_names(&s.images);
            }
            report.action = Action::Unchanged;
            return Ok(report);
        }
        Start::NothingToMerge => {
            report.action = Action::NothingToMerge;
            return Ok(report);
        }
        Start::Proceed => {}
    }
    let old_reload = current
        .iter()
        .filter_map(|c| c.state.as_ref())
        .any(|s| wants_reload(&s.images));
    let staging = Staging {
        opts,
        root,
        disc: &disc,
        host: &host,
        policy: &policy,
        fingerprint: &fp,
    };
    let (images, names, built) = staging.run()?;
    report.images = images;
    report.extensions = names;
    swap_in(opts, root, mode, &current, &built, old_reload, report)
}

fn merged_names(images: &[ImageReport]) -> Vec<String> {
    images
        .iter()
        .filter(|i| i.outcome == Outcome::Merged)
        .map(|i| i.name.clone())
        .collect()
}

/// Reports of every image, merged names in stack order, built overlays.
type Staged = (Vec<ImageReport>, Vec<String>, Vec<Built>);

/// Everything the staging namespace needs.
struct Staging<'a> {
    opts: &'a Options,
    root: &'a Root,
    disc: &'a Discovery,
    host: &'a HostRelease,
    policy: &'a EffectivePolicy,
    fingerprint: &'a str,
}

impl Staging<'_> {
    /// Staging runs on a thread of its own that enters a private mount
    /// namespace and ends with it; the calling thread never leaves the
    /// original namespace. Rayon's pool (used for hashing) is started here
    /// first so that its threads do not live in, and keep alive, the
    /// staging namespace.
    fn run(&self) -> Result<Staged, RuntimeError> {
        let _ = rayon::current_num_threads();
        let staged = std::thread::scope(|s| {
            s.spawn(|| -> Result<Staged, RuntimeError> {
                crate::ns::enter_staging_namespace()
                    .map_err(io_ctx("entering a private mount namespace"))?;
                let ws = Workspace::create(&self.opts.run_dir)?;
                self.in_namespace(&ws)
            })
            .join()
            .unwrap_or(Err(RuntimeError::StagingPanicked))
        });
        let _ = std::fs::remove_dir(Workspace::dir_in(&self.opts.run_dir));
        staged
    }

    /// Mounts the images, reveals the host's hierarchies (in this
    /// namespace only), builds the overlays and records the state.
    fn in_namespace(&self, ws: &Workspace) -> Result<Staged, RuntimeError> {
        let backend = verify::select_backend(self.opts.backend);
        let cx = stage::Context {
            ws,
            root: self.root,
            host: self.host,
            policy: self.policy.policy,
            force: self.opts.force,
            backend: backend.as_ref(),
        };
        let (plan, reports) = stage::stage_images(&cx, self.disc);
        let names = plan.names();
        if plan.merge.is_empty() {
            return Ok((reports, names, Vec::new()));
        }
        for h in &self.opts.hierarchies {
            let target = self
                .root
                .resolve_nonexistent(h)
                .map_err(io_ctx(format!("resolving {}", self.root.join(h).display())))?;
            swap::unmount_all_ours(&target)?;
        }
        let mut built = Vec::new();
        let mut metas = Vec::new();
        for h in &self.opts.hierarchies {
            if let Some((b, meta)) = swap::build_hierarchy(ws, self.root, h, &plan.merge, &names)? {
                built.push(b);
                metas.push(meta);
            }
        }
        let state = MergeState {
            tool: format!("sysext-forge {}", env!("CARGO_PKG_VERSION")),
            fingerprint: self.fingerprint.to_string(),
            merged_at_usec: state::now_usec(),
            policy: self.policy.policy,
            images: reports.clone(),
        };
        state::write_state(&metas, &state)?;
        Ok((reports, names, built))
    }
}

/// In the original namespace: puts the built trees in place (or unmerges
/// what the new set has nothing for) and reloads the service manager when
/// an old or new extension asks for it.
fn swap_in(
    opts: &Options,
    root: &Root,
    mode: Mode,
    current: &[Current],
    built: &[Built],
    old_reload: bool,
    mut report: MergeReport,
) -> Result<MergeReport, RuntimeError> {
    let new_reload = wants_reload(&report.images);
    if report.extensions.is_empty() {
        report.action = Action::NothingToMerge;
        if mode == Mode::Refresh {
            for c in current {
                if swap::unmount_all_ours(&c.target)? {
                    report.unmerged.push(c.hierarchy.clone());
                }
            }
        }
        report.reloaded_manager =
            maybe_reload(opts, root, old_reload && !report.unmerged.is_empty());
        return Ok(report);
    }
    for c in current {
        match built.iter().find(|b| b.hierarchy == c.hierarchy) {
            Some(b) => {
                let swap = swap::attach(b, &c.target)?;
                report.hierarchies.push(HierarchyReport {
                    hierarchy: c.hierarchy.clone(),
                    swap,
                    layers: b.layers.clone(),
                });
            }
            None => {
                if swap::unmount_all_ours(&c.target)? {
                    report.hierarchies.push(HierarchyReport {
                        hierarchy: c.hierarchy.clone(),
                        swap: Swap::Unmerged,
                        layers: Vec::new(),
                    });
                }
            }
        }
    }
    report.reloaded_manager = maybe_reload(opts, root, old_reload || new_reload);
    Ok(report)
}

/// `sysext unmerge`: detaches every merged overlay (ours or
/// systemd-sysext's) from the hierarchies.
pub fn unmerge(opts: &Options) -> Result<UnmergeReport, RuntimeError> {
    require_root("unmerge")?;
    let root = Root::open(&opts.root).map_err(root_err(&opts.root))?;
    // Shared with `sysext update`: serialises with updates; taken first.
    let _main = lock::acquire(&opts.root)?;
    let _run = lock::acquire_run_dir(&opts.run_dir)?;
    let current = current_state(&root, &opts.hierarchies)?;
    let mut reload = false;
    let mut out = UnmergeReport {
        unmerged: Vec::new(),
        reloaded_manager: false,
    };
    for c in current.iter().filter(|c| c.merged) {
        reload |= match &c.state {
            Some(s) => wants_reload(&s.images),
            None => merged_tree_wants_reload(&c.target),
        };
        if swap::unmount_all_ours(&c.target)? {
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
        let p: PathBuf = tree
            .join("lib/extension-release.d")
            .join(format!("extension-release.{n}"));
        crate::osrelease::read(&p)
            .map(|f| wants_manager_reload(&f))
            .unwrap_or(false)
    })
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
