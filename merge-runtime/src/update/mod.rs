//! `sysext update`, `sysext rollback` and `sysext pending`: A/B updates of
//! extension images from a feed, health-checked, rolled back on failure,
//! and safe to kill at any instant.
//!
//! Owns the update flow; its parts live in submodules:
//! - [`definitions`]: transfer files (`/etc/sysupdate.NAME.d/*.transfer`);
//! - [`feed`]: the signed `SHA256SUMS`, `BEST-BEFORE`, resumable downloads;
//! - [`target`]: instances in the target directory, `CurrentSymlink=`,
//!   vacuuming, the pre-activation image check;
//! - [`health`]: `--check CMD` / `--check-unit UNIT`;
//! - [`state`]: failed versions, previous instances, the activation journal;
//! - [`lock`]: the locks shared with merge/refresh/unmerge.
//!
//! # One update, step by step
//! 1. take the update lock; finish an activation a killed run left behind
//!    (see *Crash safety*);
//! 2. fetch `SHA256SUMS`, verify `SHA256SUMS.gpg` with the keyring under
//!    the root (`Verify=no` is obeyed, with a loud warning), refuse it when
//!    its `BEST-BEFORE` date has come;
//! 3. choose the newest version every transfer of the component offers that
//!    the patterns allow (a minor stream's pattern never matches another
//!    minor), that `MinVersion=` allows and that did not fail before; if it
//!    is not newer than the current one, stop (no-op);
//! 4. vacuum to `InstancesMax - 1` (never the current or previous
//!    instance), download into `.#sysext-FILE.partial` in the target
//!    directory (resuming a partial file with `Range`), check its sha256
//!    against the verified manifest (a file larger than
//!    `--max-download-size` is refused, by its `Content-Length` or by
//!    counting, and its partial file deleted);
//! 5. check the image under the node's policy, exactly as a merge would
//!    (policy, root-hash signature against `verity.d`, every data block);
//!    an image refused here is deleted and its version recorded as failed
//!    with the reason (the same bytes would be refused again), so later
//!    runs skip it unless `--retry-failed`;
//! 6. set its mode (0444 by default), fsync, rename into place;
//! 7. under the main lock: write the activation journal, flip
//!    `CurrentSymlink=` (new symlink under a temporary name, renamed over
//!    the old one), refresh the merged set through the runtime, make sure
//!    the new image was merged, run the health check; on failure record the
//!    version as failed, point the link back at the previous instance and
//!    refresh again;
//! 8. clear the journal, remember the previous instance, vacuum to
//!    `InstancesMax`.
//!
//! # Crash safety
//! Every file appears under its final name complete (partial file, sha256,
//! fsync, rename); the link is replaced by `rename(2)`, so it points at the
//! old or the new complete image, never at nothing; the runtime's refresh
//! swaps the merged trees without a gap. The journal is written before the
//! link flips and cleared only after the health check or rollback, so the
//! next run knows whether an activation was interrupted and finishes it:
//! if the version is already recorded as failed, the rollback is completed;
//! if every link points at the new image, the refresh and health check are
//! run again (with the check the interrupted run had); otherwise the links
//! are put back and the update starts over (resuming the download).

pub mod definitions;
pub mod feed;
pub mod health;
pub mod lock;
pub mod state;
pub mod target;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sysupdate::candidates::{self, Candidate};
use sysupdate::{Date, Version};

use crate::discover::Sidecars;
use crate::root::Root;
use crate::runtime::{self, Options, Outcome as MergeOutcome};
use definitions::{Component, DefinitionError};
use feed::{Feed, FeedError, FetchedManifest};
use health::Check;
use state::{Activation, ComponentState, LinkChange, StateError, StateFile};
use target::{Instance, Target};

/// fsyncs a directory (after a rename or unlink in it).
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// How to update.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// Root, policy, verity backend, hierarchies: used for the image check
    /// and the refresh.
    pub runtime: Options,
    /// `--definitions DIR` (inside the root).
    pub definitions: Option<PathBuf>,
    /// The health check after activation.
    pub check: Option<Check>,
    pub check_timeout: Duration,
    /// Refresh the merged set after flipping the link (default). Without
    /// it the update only installs and flips, like systemd-sysupdate.
    pub refresh: bool,
    /// Also consider versions recorded as failed.
    pub retry_failed: bool,
    /// "Today" for `BEST-BEFORE` (default: the current UTC date).
    pub today: Option<Date>,
    /// Largest image file downloaded, in bytes (`--max-download-size`).
    pub max_download_size: u64,
}

impl UpdateOptions {
    pub fn new(runtime: Options) -> UpdateOptions {
        UpdateOptions {
            runtime,
            definitions: None,
            check: None,
            check_timeout: Duration::from_secs(60),
            refresh: true,
            retry_failed: false,
            today: None,
            max_download_size: feed::DEFAULT_MAX_DOWNLOAD,
        }
    }
}

/// Something happened (for progress display and for tests that kill the
/// process at chosen points).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Another process holds a lock; waiting for it.
    LockWait {
        path: PathBuf,
    },
    Component {
        component: String,
    },
    Warning {
        component: String,
        message: String,
    },
    Recovering {
        component: String,
        version: String,
        action: String,
    },
    Manifest {
        component: String,
        url: String,
        verified: bool,
        signer: Option<String>,
    },
    Plan {
        component: String,
        current: Option<String>,
        newest: Option<String>,
        action: String,
    },
    Vacuumed {
        component: String,
        removed: Vec<PathBuf>,
    },
    DownloadStart {
        component: String,
        url: String,
        file: PathBuf,
        resume_from: u64,
    },
    DownloadProgress {
        component: String,
        file: String,
        bytes: u64,
        total: Option<u64>,
    },
    DownloadDone {
        component: String,
        file: String,
        bytes: u64,
        transferred: u64,
    },
    /// The file was already installed with the right digest.
    Reused {
        component: String,
        file: PathBuf,
    },
    ImageVerified {
        component: String,
        file: PathBuf,
        policy: String,
        signer: Option<String>,
        verified_bytes: u64,
    },
    Installed {
        component: String,
        file: PathBuf,
    },
    JournalWritten {
        component: String,
        version: String,
    },
    LinkFlipped {
        component: String,
        link: String,
        target: Option<String>,
    },
    RefreshStart {
        component: String,
    },
    RefreshDone {
        component: String,
        action: String,
    },
    CheckStart {
        component: String,
        check: String,
    },
    CheckPassed {
        component: String,
    },
    CheckFailed {
        component: String,
        reason: String,
    },
    RollingBack {
        component: String,
        version: String,
        reason: String,
    },
    Done {
        component: String,
        outcome: Outcome,
    },
}

/// The result for one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A new version was installed, activated and (if asked) health-checked.
    Installed,
    /// Installed and the link flipped, but not refreshed (`--no-refresh`).
    Staged,
    /// Nothing newer to install.
    UpToDate,
    /// `pending`: this version would be installed.
    WouldInstall,
    /// The manifest names no file the patterns match.
    NothingAvailable,
    /// The new version failed activation or its health check; the
    /// previous one is current again and the version is recorded as failed.
    RolledBack,
    /// The feed or the image was refused (signature, digest, staleness,
    /// policy); nothing changed.
    Refused,
    /// Something else went wrong (network, I/O, configuration).
    Failed,
}

impl Outcome {
    /// Whether this outcome means the command failed (exit status 1).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::RolledBack | Outcome::Refused | Outcome::Failed | Outcome::NothingAvailable
        )
    }
}

/// What is known about a component's manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInfo {
    pub url: String,
    pub verified: bool,
    pub signer: Option<String>,
    pub best_before: Option<String>,
}

/// A version `update` skips because it failed before.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedVersion {
    pub version: String,
    /// Why it was recorded as failed (health check, rollback, refused by
    /// the node's image policy).
    pub reason: String,
}

/// The report for one component.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    pub component: String,
    pub outcome: Outcome,
    pub current_before: Option<String>,
    pub current_after: Option<String>,
    /// The version chosen (installed, or that would be).
    pub version: Option<String>,
    /// Newer versions skipped because they failed before.
    pub skipped_failed: Vec<String>,
    /// The same versions, each with the reason it was recorded as failed.
    pub skipped: Vec<SkippedVersion>,
    pub manifests: Vec<ManifestInfo>,
    /// What was done about an activation a killed run left behind.
    pub recovered: Option<String>,
    pub reason: Option<String>,
    pub warnings: Vec<String>,
    pub removed: Vec<PathBuf>,
    pub downloaded_bytes: u64,
}

impl ComponentReport {
    fn new(component: &str) -> ComponentReport {
        ComponentReport {
            component: component.to_string(),
            outcome: Outcome::Failed,
            current_before: None,
            current_after: None,
            version: None,
            skipped_failed: Vec::new(),
            skipped: Vec::new(),
            manifests: Vec::new(),
            recovered: None,
            reason: None,
            warnings: Vec::new(),
            removed: Vec::new(),
            downloaded_bytes: 0,
        }
    }

    fn end(mut self, outcome: Outcome, reason: Option<String>) -> ComponentReport {
        self.outcome = outcome;
        if reason.is_some() {
            self.reason = reason;
        }
        self
    }
}

/// The report of `update`, `pending` or `rollback`.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    pub components: Vec<ComponentReport>,
}

impl UpdateReport {
    /// True when no component failed.
    pub fn success(&self) -> bool {
        self.components.iter().all(|c| !c.outcome.is_failure())
    }
}

/// Errors that stop the whole command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("need to be privileged (root) to {0}")]
    NotPrivileged(&'static str),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Definitions(#[from] DefinitionError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no components to update: no sysupdate.NAME.d directory in {dirs} under {root}; install a feed's transfer file as /etc/sysupdate.NAME.d/NAME.transfer")]
    NoComponents { root: PathBuf, dirs: String },
    #[error("rollback of {component}: {msg}")]
    Rollback { component: String, msg: String },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Shared state of one command.
struct Ctx<'a> {
    opts: &'a UpdateOptions,
    root: Root,
    state: StateFile,
    feed: Feed,
    spec: sysupdate::specifier::SpecifierContext,
    obs: &'a mut dyn FnMut(&Event),
}

impl Ctx<'_> {
    fn emit(&mut self, e: Event) {
        (self.obs)(&e);
    }

    fn main_lock(&mut self) -> Result<lock::Lock, Error> {
        let obs = &mut *self.obs;
        lock::acquire_main(self.root.path(), &mut |p| {
            obs(&Event::LockWait {
                path: p.to_path_buf(),
            })
        })
        .map_err(io_ctx("taking the sysext lock"))
    }
}

fn require_root(what: &'static str) -> Result<(), Error> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotPrivileged(what))
    }
}

fn open_ctx<'a>(opts: &'a UpdateOptions, obs: &'a mut dyn FnMut(&Event)) -> Result<Ctx<'a>, Error> {
    let root = Root::open(&opts.runtime.root).map_err(io_ctx(format!(
        "opening root {}",
        opts.runtime.root.display()
    )))?;
    let state = StateFile::load(&root)?;
    let spec = definitions::specifier_context(&root);
    Ok(Ctx {
        opts,
        root,
        state,
        feed: Feed::new(),
        spec,
        obs,
    })
}

/// The components to work on: `names`, or every `sysupdate.NAME.d`.
fn select_components(ctx: &Ctx, names: &[String]) -> Result<Vec<String>, Error> {
    if !names.is_empty() {
        for n in names {
            definitions::check_name(n)?;
        }
        return Ok(names.to_vec());
    }
    if let Some(d) = &ctx.opts.definitions {
        // `--definitions DIR` alone: the component is named after DIR
        // (`sysupdate.NAME.d` → NAME).
        let base = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = base
            .strip_prefix("sysupdate.")
            .and_then(|r| r.strip_suffix(".d"))
            .unwrap_or(&base)
            .to_string();
        definitions::check_name(&name)?;
        return Ok(vec![name]);
    }
    let names = definitions::component_names(&ctx.root)?;
    if names.is_empty() {
        return Err(Error::NoComponents {
            root: ctx.root.path().to_path_buf(),
            dirs: definitions::DEFINITION_DIRS.join(", "),
        });
    }
    Ok(names)
}

/// `sysext update [NAME...]`.
pub fn update(
    opts: &UpdateOptions,
    names: &[String],
    obs: &mut dyn FnMut(&Event),
) -> Result<UpdateReport, Error> {
    if opts.refresh {
        require_root("update (it refreshes the merged extensions; --no-refresh only installs)")?;
    }
    let mut ctx = open_ctx(opts, obs)?;
    let _update_lock = {
        let obs = &mut *ctx.obs;
        lock::acquire_update(ctx.root.path(), &mut |p| {
            obs(&Event::LockWait {
                path: p.to_path_buf(),
            })
        })
        .map_err(io_ctx("taking the update lock"))?
    };
    // Re-read under the lock: another update may just have finished.
    ctx.state = StateFile::load(&ctx.root)?;
    let names = select_components(&ctx, names)?;
    let mut out = UpdateReport {
        components: Vec::new(),
    };
    for name in &names {
        let r = update_component(&mut ctx, name, false);
        ctx.emit(Event::Done {
            component: name.clone(),
            outcome: r.outcome,
        });
        out.components.push(r);
    }
    Ok(out)
}

/// `sysext pending [NAME...]`: what `update` would do, changing nothing.
pub fn pending(
    opts: &UpdateOptions,
    names: &[String],
    obs: &mut dyn FnMut(&Event),
) -> Result<UpdateReport, Error> {
    let mut ctx = open_ctx(opts, obs)?;
    let names = select_components(&ctx, names)?;
    let mut out = UpdateReport {
        components: Vec::new(),
    };
    for name in &names {
        let r = update_component(&mut ctx, name, true);
        out.components.push(r);
    }
    Ok(out)
}

fn load_targets(ctx: &Ctx, name: &str) -> Result<(Component, Vec<Target>), String> {
    let comp = definitions::load(&ctx.root, name, ctx.opts.definitions.as_deref(), &ctx.spec)
        .map_err(|e| e.to_string())?;
    let targets = comp
        .transfers
        .iter()
        .map(|t| Target::open(&ctx.root, t))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    Ok((comp, targets))
}

/// The target whose link decides the current version.
fn primary(targets: &[Target]) -> Option<&Target> {
    targets.iter().find(|t| t.link.is_some())
}

fn current_version(ctx: &Ctx, targets: &[Target]) -> Option<Version> {
    match primary(targets) {
        Some(t) => t.current(&ctx.root).map(|i| i.version),
        None => targets
            .first()
            .and_then(|t| t.instances().ok())
            .and_then(|v| v.into_iter().next())
            .map(|i| i.version),
    }
}

fn is_refusal(e: &FeedError) -> bool {
    matches!(
        e,
        FeedError::NoKeyring { .. }
            | FeedError::NoSignature { .. }
            | FeedError::BadSignature { .. }
            | FeedError::Manifest { .. }
            | FeedError::Expired { .. }
            | FeedError::Sha256Mismatch { .. }
            | FeedError::TooLarge { .. }
            | FeedError::DownloadTooLarge { .. }
    )
}

fn update_component(ctx: &mut Ctx, name: &str, dry_run: bool) -> ComponentReport {
    let mut rep = ComponentReport::new(name);
    ctx.emit(Event::Component {
        component: name.to_string(),
    });
    let (comp, targets) = match load_targets(ctx, name) {
        Ok(x) => x,
        Err(e) => return rep.end(Outcome::Failed, Some(e)),
    };
    for w in &comp.warnings {
        ctx.emit(Event::Warning {
            component: name.to_string(),
            message: w.clone(),
        });
        rep.warnings.push(w.clone());
    }

    // 1. An activation a killed run left behind.
    if let Some(act) = ctx.state.component(name).activating {
        if dry_run {
            rep.recovered = Some(format!(
                "an interrupted activation of version {} will be finished by the next update",
                act.version
            ));
        } else {
            let lock = match ctx.main_lock() {
                Ok(l) => l,
                Err(e) => return rep.end(Outcome::Failed, Some(e.to_string())),
            };
            match recover(ctx, name, &targets, act) {
                Ok(msg) => rep.recovered = Some(msg),
                Err(e) => return rep.end(Outcome::Failed, Some(e)),
            }
            drop(lock);
        }
    }

    // 2. Manifests, one per source URL.
    let today = ctx
        .opts
        .today
        .or_else(Date::today_utc)
        .unwrap_or(Date::new(1970, 1, 1).expect("valid date"));
    let mut manifests: BTreeMap<String, FetchedManifest> = BTreeMap::new();
    for t in &targets {
        let tr = &t.transfer;
        if manifests.contains_key(&tr.source_url) {
            continue;
        }
        if !tr.verify {
            let msg = format!(
                "WARNING: {} has Verify=no: the signature of {} is NOT checked. Anyone who can change the feed or the connection to it can make this node run their code. Sign the feed and set Verify=yes.",
                tr.file.display(),
                feed::file_url(&tr.source_url, "SHA256SUMS")
            );
            ctx.emit(Event::Warning {
                component: name.to_string(),
                message: msg.clone(),
            });
            rep.warnings.push(msg);
        }
        match ctx
            .feed
            .fetch_manifest(&ctx.root, &tr.source_url, tr.verify, today)
        {
            Ok(m) => {
                ctx.emit(Event::Manifest {
                    component: name.to_string(),
                    url: m.url.clone(),
                    verified: m.signer.is_some(),
                    signer: m.signer.clone(),
                });
                rep.manifests.push(ManifestInfo {
                    url: m.url.clone(),
                    verified: m.signer.is_some(),
                    signer: m.signer.clone(),
                    best_before: m.manifest.best_before().map(|d| d.to_string()),
                });
                manifests.insert(tr.source_url.clone(), m);
            }
            Err(e) => {
                let outcome = if is_refusal(&e) {
                    Outcome::Refused
                } else {
                    Outcome::Failed
                };
                rep.current_before = current_version(ctx, &targets).map(|v| v.to_string());
                rep.current_after = rep.current_before.clone();
                return rep.end(outcome, Some(e.to_string()));
            }
        }
    }

    // 3. Choose.
    let mut lists: Vec<Vec<Candidate>> = Vec::new();
    for t in &targets {
        let m = &manifests[&t.transfer.source_url];
        match candidates::list(&m.manifest, &t.transfer.source_patterns) {
            Ok(l) => lists.push(l),
            Err(e) => return rep.end(Outcome::Refused, Some(format!("{}: {e}", m.url))),
        }
    }
    let cstate = ctx.state.component(name);
    let current = current_version(ctx, &targets);
    rep.current_before = current.as_ref().map(|v| v.to_string());
    rep.current_after = rep.current_before.clone();
    let common = candidates::common_versions(&lists);
    if common.is_empty() {
        let pats: Vec<String> = targets
            .iter()
            .flat_map(|t| {
                t.transfer
                    .source_patterns
                    .iter()
                    .map(|p| p.as_str().to_string())
            })
            .collect();
        return rep.end(
            Outcome::NothingAvailable,
            Some(format!(
                "the manifest lists no file matching {} (wrong architecture or stream?)",
                pats.join(", ")
            )),
        );
    }
    let min_ok = |v: &Version| {
        targets.iter().all(|t| {
            t.transfer
                .min_version
                .as_ref()
                .is_none_or(|m| v.cmp_uapi(m) != std::cmp::Ordering::Less)
        })
    };
    let mut chosen: Option<Version> = None;
    for v in &common {
        if !min_ok(v) {
            continue;
        }
        if cstate.is_failed(v) && !ctx.opts.retry_failed {
            rep.skipped_failed.push(v.to_string());
            let reason = cstate
                .failed
                .iter()
                .find(|f| f.version.uapi_eq(v))
                .map(|f| f.reason.clone())
                .unwrap_or_default();
            rep.skipped.push(SkippedVersion {
                version: v.to_string(),
                reason,
            });
            continue;
        }
        chosen = Some(v.clone());
        break;
    }
    let newer = |v: &Version| {
        current
            .as_ref()
            .is_none_or(|c| v.cmp_uapi(c) == std::cmp::Ordering::Greater)
    };
    // Failed versions older than what is current are irrelevant.
    rep.skipped_failed
        .retain(|s| Version::new(s.as_str()).is_ok_and(|v| newer(&v)));
    rep.skipped
        .retain(|s| Version::new(s.version.as_str()).is_ok_and(|v| newer(&v)));
    let Some(version) = chosen.filter(|v| newer(v)) else {
        let action = if rep.skipped_failed.is_empty() {
            "up to date".to_string()
        } else {
            format!(
                "up to date; skipping version(s) {} that failed before (--retry-failed tries again)",
                rep.skipped_failed.join(", ")
            )
        };
        ctx.emit(Event::Plan {
            component: name.to_string(),
            current: rep.current_before.clone(),
            newest: common.first().map(|v| v.to_string()),
            action,
        });
        return rep.end(Outcome::UpToDate, None);
    };
    rep.version = Some(version.to_string());
    ctx.emit(Event::Plan {
        component: name.to_string(),
        current: rep.current_before.clone(),
        newest: Some(version.to_string()),
        action: format!("install {version}"),
    });
    if dry_run {
        return rep.end(Outcome::WouldInstall, None);
    }

    match install_and_activate(ctx, name, &targets, &lists, &manifests, &version, &mut rep) {
        Ok(outcome) => {
            rep.current_after = current_version(ctx, &targets).map(|v| v.to_string());
            rep.end(outcome, None)
        }
        Err((outcome, reason)) => {
            rep.current_after = current_version(ctx, &targets).map(|v| v.to_string());
            rep.end(outcome, Some(reason))
        }
    }
}

type Fail = (Outcome, String);

fn failed(e: impl std::fmt::Display) -> Fail {
    (Outcome::Failed, e.to_string())
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

struct Staged {
    target_idx: usize,
    final_path: PathBuf,
    /// `Some` when downloaded now (to be renamed), `None` when reused.
    partial: Option<PathBuf>,
}

#[allow(clippy::too_many_arguments)]
fn install_and_activate(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    lists: &[Vec<Candidate>],
    manifests: &BTreeMap<String, FetchedManifest>,
    version: &Version,
    rep: &mut ComponentReport,
) -> Result<Outcome, Fail> {
    // 4. Download (after making room).
    let mut staged: Vec<Staged> = Vec::new();
    for (idx, t) in targets.iter().enumerate() {
        let cand = lists[idx]
            .iter()
            .find(|c| c.version.uapi_eq(version))
            .ok_or_else(|| {
                failed(format!(
                    "version {version} vanished from the candidate list"
                ))
            })?;
        let final_name = t.final_name(cand).map_err(failed)?;
        let final_path = t.dir.join(&final_name);
        let partial = t.partial_path(&final_name);
        t.ensure_dir().map_err(failed)?;
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
            .map_err(failed)?;
        if !removed.is_empty() {
            ctx.emit(Event::Vacuumed {
                component: name.to_string(),
                removed: removed.clone(),
            });
            rep.removed.extend(removed);
        }
        let url = feed::file_url(&t.transfer.source_url, cand.name.as_str());
        if final_path.is_file() {
            match feed::sha256_file(&final_path) {
                Ok(d) if d == cand.digest => {
                    ctx.emit(Event::Reused {
                        component: name.to_string(),
                        file: final_path.clone(),
                    });
                    staged.push(Staged {
                        target_idx: idx,
                        final_path,
                        partial: None,
                    });
                    continue;
                }
                // Damaged or different: download again, replace atomically.
                _ => {}
            }
        }
        let resume_from = std::fs::symlink_metadata(&partial)
            .map(|m| m.len())
            .unwrap_or(0);
        ctx.emit(Event::DownloadStart {
            component: name.to_string(),
            url: url.clone(),
            file: partial.clone(),
            resume_from,
        });
        let file_label = final_name.clone();
        let comp_label = name.to_string();
        let obs = &mut *ctx.obs;
        let limit = ctx.opts.max_download_size;
        let r = ctx
            .feed
            .download(&url, &partial, &cand.digest, limit, &mut |p| {
                obs(&Event::DownloadProgress {
                    component: comp_label.clone(),
                    file: file_label.clone(),
                    bytes: p.done,
                    total: p.total,
                })
            });
        let d = match r {
            Ok(d) => d,
            Err(e) => {
                let outcome = if is_refusal(&e) {
                    Outcome::Refused
                } else {
                    Outcome::Failed
                };
                return Err((outcome, e.to_string()));
            }
        };
        rep.downloaded_bytes += d.transferred;
        ctx.emit(Event::DownloadDone {
            component: name.to_string(),
            file: final_name.clone(),
            bytes: d.bytes,
            transferred: d.transferred,
        });
        staged.push(Staged {
            target_idx: idx,
            final_path,
            partial: Some(partial),
        });
    }
    let _ = manifests;

    // 5. Check each image under the node's policy, before it can become
    // current. Sidecars being installed with it are used.
    let remove_partials = |staged: &[Staged]| {
        for s in staged {
            if let Some(p) = &s.partial {
                let _ = std::fs::remove_file(p);
            }
        }
    };
    for s in &staged {
        let t = &targets[s.target_idx];
        if t.link.is_none() {
            continue;
        }
        let file = s.partial.as_ref().unwrap_or(&s.final_path);
        let sidecars = sidecars_for(&s.final_path, &staged);
        match target::verify_image(&ctx.opts.runtime, file, &sidecars) {
            Ok(c) => ctx.emit(Event::ImageVerified {
                component: name.to_string(),
                file: s.final_path.clone(),
                policy: c.policy.to_string(),
                signer: c.decision.signer.clone(),
                verified_bytes: c.verified_bytes,
            }),
            Err(e) => {
                remove_partials(&staged);
                let mut msg = format!(
                    "{} (version {version}) is refused by this node's image policy: {e}; nothing was changed",
                    s.final_path.display()
                );
                if let target::ImageCheckError::Refused(reason) = &e {
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
                    match ctx.state.put(name, cstate) {
                        Ok(()) => msg.push_str(&format!(
                            "; version {version} is recorded as failed and skipped by later updates (--retry-failed tries it again)"
                        )),
                        Err(e) => msg.push_str(&format!("; could not record it as failed: {e}")),
                    }
                }
                return Err((Outcome::Refused, msg));
            }
        }
    }

    // 6. Into place.
    for s in &staged {
        let t = &targets[s.target_idx];
        if let Some(p) = &s.partial {
            target::set_mode(p, t.transfer.mode).map_err(failed)?;
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(|e| failed(format!("{}: {e}", p.display())))?;
            std::fs::rename(p, &s.final_path)
                .map_err(|e| failed(format!("renaming {} into place: {e}", p.display())))?;
            fsync_dir(&t.dir).map_err(|e| failed(format!("{}: {e}", t.dir.display())))?;
            ctx.emit(Event::Installed {
                component: name.to_string(),
                file: s.final_path.clone(),
            });
        }
    }

    // 7. Activate.
    let lock = ctx.main_lock().map_err(failed)?;
    let mut links = Vec::new();
    for s in &staged {
        let t = &targets[s.target_idx];
        if let Some(l) = &t.link {
            let old = l.read().map_err(failed)?;
            let new = l.text_for(&s.final_path).map_err(failed)?;
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
    ctx.state.put(name, cstate).map_err(failed)?;
    ctx.emit(Event::JournalWritten {
        component: name.to_string(),
        version: version.to_string(),
    });
    set_links(ctx, name, targets, &act, true).map_err(failed)?;
    let outcome = finish_activation(ctx, name, targets, &act)?;
    drop(lock);

    // 8. Vacuum to InstancesMax.
    if outcome == Outcome::Installed || outcome == Outcome::Staged {
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
    Ok(outcome)
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

/// Points every link of `act` at its new (`forward`) or old target.
fn set_links(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: &Activation,
    forward: bool,
) -> io::Result<()> {
    for ch in &act.links {
        let Some(link) = targets
            .iter()
            .filter_map(|t| t.link.as_ref())
            .find(|l| l.path == ch.link)
        else {
            continue;
        };
        let text = if forward {
            Some(ch.new.as_str())
        } else {
            ch.old.as_deref()
        };
        if link.read()?.as_deref() != text {
            link.set(text)?;
        }
        ctx.emit(Event::LinkFlipped {
            component: name.to_string(),
            link: ch.link.clone(),
            target: text.map(str::to_string),
        });
    }
    Ok(())
}

/// Refreshes the merged set; `Err` when the runtime failed as a whole.
fn refresh(ctx: &mut Ctx, name: &str) -> Result<runtime::MergeReport, String> {
    ctx.emit(Event::RefreshStart {
        component: name.to_string(),
    });
    let r = runtime::refresh(&ctx.opts.runtime).map_err(|e| format!("refresh: {e}"))?;
    ctx.emit(Event::RefreshDone {
        component: name.to_string(),
        action: format!("{:?}", r.action).to_lowercase(),
    });
    Ok(r)
}

/// After the links point at the new version: refresh, make sure the new
/// image was merged, run the health check; roll back on failure.
fn finish_activation(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: &Activation,
) -> Result<Outcome, Fail> {
    if !ctx.opts.refresh {
        finalize(ctx, name, act).map_err(failed)?;
        return Ok(Outcome::Staged);
    }
    let report = match refresh(ctx, name) {
        Ok(r) => r,
        Err(e) => {
            // Not the image's fault as far as we know: put the old links
            // back without recording the version as failed.
            set_links(ctx, name, targets, act, false).map_err(failed)?;
            let again = refresh(ctx, name).err();
            let mut c = ctx.state.component(name);
            c.activating = None;
            ctx.state.put(name, c).map_err(failed)?;
            let mut msg = format!("{e}; the previous image is current again");
            if let Some(a) = again {
                msg.push_str(&format!(" (and refreshing it failed too: {a})"));
            }
            return Err((Outcome::Failed, msg));
        }
    };
    for ch in &act.links {
        let Some(link) = targets
            .iter()
            .filter_map(|t| t.link.as_ref())
            .find(|l| l.path == ch.link)
        else {
            continue;
        };
        let ext = link.extension_name();
        match report.images.iter().find(|i| i.name == ext) {
            Some(img) => {
                if let MergeOutcome::Refused { stage, reason } = &img.outcome {
                    let reason = format!("the merge refused the new image ({stage:?}): {reason}");
                    return roll_back(ctx, name, targets, act, reason);
                }
            }
            None => {
                // A link in a search directory must have been merged
                // (unless the admin masked the name).
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
                    let reason = format!("the refresh did not merge {}: {why}", link.path);
                    return roll_back(ctx, name, targets, act, reason);
                }
            }
        }
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
            return roll_back(
                ctx,
                name,
                targets,
                act,
                format!("health check failed: {reason}"),
            );
        }
        ctx.emit(Event::CheckPassed {
            component: name.to_string(),
        });
    }
    finalize(ctx, name, act).map_err(failed)?;
    Ok(Outcome::Installed)
}

/// The activation succeeded: remember the previous targets, clear the
/// journal.
fn finalize(ctx: &mut Ctx, name: &str, act: &Activation) -> Result<(), StateError> {
    let mut c = ctx.state.component(name);
    c.activating = None;
    for ch in &act.links {
        match &ch.old {
            Some(old) if *old != ch.new => {
                c.previous.insert(ch.link.clone(), old.clone());
            }
            Some(_) => {}
            None => {
                c.previous.remove(&ch.link);
            }
        }
    }
    if ctx.opts.retry_failed {
        c.failed.retain(|f| !f.version.uapi_eq(&act.version));
    }
    ctx.state.put(name, c)
}

/// Records the version as failed, points the links back, refreshes.
fn roll_back(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: &Activation,
    reason: String,
) -> Result<Outcome, Fail> {
    ctx.emit(Event::RollingBack {
        component: name.to_string(),
        version: act.version.to_string(),
        reason: reason.clone(),
    });
    let mut c = ctx.state.component(name);
    c.mark_failed(&act.version, &reason, now_usec());
    ctx.state.put(name, c).map_err(failed)?;
    finish_rollback(ctx, name, targets, act, true).map_err(failed)?;
    Err((
        Outcome::RolledBack,
        format!(
            "version {} was rolled back: {reason}; it is recorded as failed and will not be installed again automatically",
            act.version
        ),
    ))
}

/// Links back to the old targets, refresh, clear the journal; with
/// `was_current`, remember the rolled-back targets as the previous ones.
fn finish_rollback(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: &Activation,
    was_current: bool,
) -> Result<(), String> {
    set_links(ctx, name, targets, act, false).map_err(|e| e.to_string())?;
    let r = if ctx.opts.refresh {
        refresh(ctx, name).err()
    } else {
        None
    };
    let mut c = ctx.state.component(name);
    c.activating = None;
    if was_current {
        for ch in &act.links {
            c.previous.insert(ch.link.clone(), ch.new.clone());
        }
    }
    ctx.state.put(name, c).map_err(|e| e.to_string())?;
    match r {
        Some(e) => Err(format!("after restoring the previous image: {e}")),
        None => Ok(()),
    }
}

/// Finishes an activation that a killed run left in the journal.
fn recover(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: Activation,
) -> Result<String, String> {
    let v = act.version.to_string();
    let failed_before = ctx.state.component(name).is_failed(&act.version);
    let mut now = Vec::new();
    for ch in &act.links {
        let link = targets
            .iter()
            .filter_map(|t| t.link.as_ref())
            .find(|l| l.path == ch.link);
        now.push(match link {
            Some(l) => l.read().map_err(|e| e.to_string())?,
            None => None,
        });
    }
    let all_new = act
        .links
        .iter()
        .zip(&now)
        .all(|(ch, n)| n.as_deref() == Some(ch.new.as_str()));
    let action = if failed_before {
        "finishing the interrupted rollback"
    } else if all_new {
        "finishing the interrupted activation (refresh and health check)"
    } else {
        "the links had not all been flipped: restoring the previous image"
    };
    ctx.emit(Event::Recovering {
        component: name.to_string(),
        version: v.clone(),
        action: action.to_string(),
    });
    if failed_before || !all_new {
        // A version that never became current is not "previous".
        finish_rollback(ctx, name, targets, &act, failed_before)?;
        return Ok(format!("version {v}: {action}"));
    }
    match finish_activation(ctx, name, targets, &act) {
        Ok(o) => Ok(format!("version {v}: {action}: {o:?}").to_lowercase()),
        Err((o, reason)) => Ok(format!("version {v}: {action}: {o:?}: {reason}")),
    }
}

/// `sysext rollback NAME`: makes the previous instance current again,
/// records the current version as failed (so updates skip it), refreshes.
pub fn rollback(
    opts: &UpdateOptions,
    name: &str,
    obs: &mut dyn FnMut(&Event),
) -> Result<ComponentReport, Error> {
    if opts.refresh {
        require_root(
            "roll back (it refreshes the merged extensions; --no-refresh only flips the link)",
        )?;
    }
    definitions::check_name(name)?;
    let mut ctx = open_ctx(opts, obs)?;
    let _update_lock = {
        let obs = &mut *ctx.obs;
        lock::acquire_update(ctx.root.path(), &mut |p| {
            obs(&Event::LockWait {
                path: p.to_path_buf(),
            })
        })
        .map_err(io_ctx("taking the update lock"))?
    };
    ctx.state = StateFile::load(&ctx.root)?;
    let rb = |msg: String| Error::Rollback {
        component: name.to_string(),
        msg,
    };
    let (_comp, targets) = load_targets(&ctx, name).map_err(rb)?;
    let _lock = ctx.main_lock()?;
    let mut rep = ComponentReport::new(name);
    rep.current_before = current_version(&ctx, &targets).map(|v| v.to_string());
    let reason = "rolled back by hand (sysext rollback)".to_string();
    if let Some(act) = ctx.state.component(name).activating {
        // An interrupted activation: roll it back.
        let mut c = ctx.state.component(name);
        c.mark_failed(&act.version, &reason, now_usec());
        ctx.state.put(name, c)?;
        finish_rollback(&mut ctx, name, &targets, &act, true).map_err(rb)?;
        rep.version = Some(act.version.to_string());
    } else {
        let mut links = Vec::new();
        let mut failing: Option<Version> = None;
        let cstate = ctx.state.component(name);
        for t in targets.iter().filter(|t| t.link.is_some()) {
            let link = t.link.as_ref().expect("filtered on link");
            let Some(cur) = t.current(&ctx.root) else {
                return Err(rb(format!(
                    "{} does not point at an instance in {}; nothing to roll back",
                    link.path, t.transfer.target_path
                )));
            };
            let prev = previous_instance(&ctx, &cstate, t, &cur).ok_or_else(|| {
                rb(format!(
                    "no earlier instance of {} is installed in {} (besides versions that failed before)",
                    name, t.transfer.target_path
                ))
            })?;
            links.push(LinkChange {
                link: link.path.clone(),
                // "old" is where we go back to.
                old: Some(link.text_for(&prev.path).map_err(|e| rb(e.to_string()))?),
                new: link
                    .read()
                    .map_err(|e| rb(e.to_string()))?
                    .unwrap_or_default(),
            });
            failing.get_or_insert(cur.version);
        }
        let Some(version) = failing else {
            return Err(rb(format!(
                "component {name} has no CurrentSymlink=; nothing to roll back"
            )));
        };
        let act = Activation {
            version: version.clone(),
            links,
            check: None,
            check_timeout_sec: 0,
            started_usec: now_usec(),
        };
        ctx.emit(Event::RollingBack {
            component: name.to_string(),
            version: version.to_string(),
            reason: reason.clone(),
        });
        let mut c = ctx.state.component(name);
        c.mark_failed(&version, &reason, now_usec());
        // Journal it, so a kill in the middle is finished by the next run.
        c.activating = Some(act.clone());
        ctx.state.put(name, c)?;
        finish_rollback(&mut ctx, name, &targets, &act, true).map_err(rb)?;
        rep.version = Some(version.to_string());
    }
    rep.current_after = current_version(&ctx, &targets).map(|v| v.to_string());
    ctx.emit(Event::Done {
        component: name.to_string(),
        outcome: Outcome::RolledBack,
    });
    Ok(rep.end(Outcome::RolledBack, Some(reason)))
}

/// The instance to roll back to: the recorded previous one if it is
/// still installed and did not fail, else the newest older one that did
/// not fail.
fn previous_instance(
    ctx: &Ctx,
    c: &ComponentState,
    t: &Target,
    cur: &Instance,
) -> Option<Instance> {
    let all = t.instances().ok()?;
    let ok = |i: &Instance| i.path != cur.path && !c.is_failed(&i.version);
    if let Some(link) = &t.link {
        if let Some(prev) = c.previous.get(&link.path) {
            if let Some(p) = link.resolve_text(&ctx.root, prev) {
                if let Some(i) = all.iter().find(|i| i.path == p && ok(i)) {
                    return Some(i.clone());
                }
            }
        }
    }
    all.into_iter()
        .filter(|i| ok(i) && i.version.cmp_uapi(&cur.version) == std::cmp::Ordering::Less)
        .max_by(|a, b| a.version.cmp(&b.version))
}
