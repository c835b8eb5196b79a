//! `sysext update` and `sysext pending`, component by component: finish
//! an interrupted activation, fetch the manifests, choose the version
//! ([`super::choose`]), then install and activate it
//! ([`super::activate`]).

use std::collections::BTreeMap;

use sysupdate::candidates::{self, Candidate};
use sysupdate::{Date, Version};

use super::activate::install_and_activate;
use super::choose::{choose, Inputs};
use super::context::{
    current_version, load_targets, open_ctx, require_root, select_components, Ctx,
};
use super::error::{ComponentError, UpdateError};
use super::feed::{self, FetchedManifest};
use super::options::UpdateOptions;
use super::recover::recover;
use super::report::{ComponentReport, Event, ManifestInfo, Outcome, UpdateReport};
use super::state::StateFile;
use super::target::Target;

/// `sysext update [NAME...]`.
pub fn update(
    opts: &UpdateOptions,
    names: &[String],
    obs: &mut dyn FnMut(&Event),
) -> Result<UpdateReport, UpdateError> {
    if opts.refresh {
        require_root("update (it refreshes the merged extensions; --no-refresh only installs)")?;
    }
    let mut ctx = open_ctx(opts, obs)?;
    let _update_lock = ctx.update_lock()?;
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
) -> Result<UpdateReport, UpdateError> {
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

fn update_component(ctx: &mut Ctx, name: &str, dry_run: bool) -> ComponentReport {
    let mut rep = ComponentReport::new(name);
    ctx.emit(Event::Component {
        component: name.to_string(),
    });
    match run_component(ctx, name, dry_run, &mut rep) {
        Ok(outcome) => rep.end(outcome, None),
        Err(e) => e.end(rep),
    }
}

fn run_component(
    ctx: &mut Ctx,
    name: &str,
    dry_run: bool,
    rep: &mut ComponentReport,
) -> Result<Outcome, ComponentError> {
    let (comp, targets) = load_targets(ctx, name)?;
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
            let lock = ctx.main_lock()?;
            rep.recovered = Some(recover(ctx, name, &targets, act, &lock)?);
        }
    }
    // 2. Manifests, one per source URL.
    let manifests = match fetch_manifests(ctx, name, &targets, rep) {
        Ok(m) => m,
        Err(e) => {
            rep.current_before = current_version(ctx, &targets).map(|v| v.to_string());
            rep.current_after = rep.current_before.clone();
            return Err(e);
        }
    };
    // 3. Choose.
    let mut lists: Vec<Vec<Candidate>> = Vec::new();
    for t in &targets {
        let m = &manifests[&t.transfer.source_url];
        let l = candidates::list(&m.manifest, &t.transfer.source_patterns).map_err(|source| {
            ComponentError::Candidates {
                url: m.url.clone(),
                source,
            }
        })?;
        lists.push(l);
    }
    let Some(version) = plan(ctx, name, &targets, &lists, rep)? else {
        return Ok(Outcome::UpToDate);
    };
    if dry_run {
        return Ok(Outcome::WouldInstall);
    }
    let r = install_and_activate(ctx, name, &targets, &lists, &version, rep);
    rep.current_after = current_version(ctx, &targets).map(|v| v.to_string());
    r
}

/// Fetches (and verifies) each transfer's manifest once per source URL.
fn fetch_manifests(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    rep: &mut ComponentReport,
) -> Result<BTreeMap<String, FetchedManifest>, ComponentError> {
    let today = ctx
        .opts
        .today
        .or_else(Date::today_utc)
        .unwrap_or(Date::new(1970, 1, 1).expect("valid date"));
    let mut manifests: BTreeMap<String, FetchedManifest> = BTreeMap::new();
    for t in targets {
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
        let m = ctx
            .feed
            .fetch_manifest(&ctx.root, &tr.source_url, tr.verify, today)?;
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
    Ok(manifests)
}

/// Chooses the version to install from the candidate lists and reports
/// the plan; `None` when up to date.
fn plan(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    lists: &[Vec<Candidate>],
    rep: &mut ComponentReport,
) -> Result<Option<Version>, ComponentError> {
    let cstate = ctx.state.component(name);
    let current = current_version(ctx, targets);
    rep.current_before = current.as_ref().map(|v| v.to_string());
    rep.current_after = rep.current_before.clone();
    let common = candidates::common_versions(lists);
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
        return Err(ComponentError::NothingAvailable {
            patterns: pats.join(", "),
        });
    }
    let min_versions: Vec<&Version> = targets
        .iter()
        .filter_map(|t| t.transfer.min_version.as_ref())
        .collect();
    let choice = choose(Inputs {
        offered: &common,
        current: current.as_ref(),
        min_versions: &min_versions,
        failed: &cstate.failed,
        retry_failed: ctx.opts.retry_failed,
    });
    rep.skipped_failed = choice.skipped.iter().map(|s| s.version.clone()).collect();
    rep.skipped = choice.skipped;
    let Some(version) = choice.install else {
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
            newest: choice.newest.map(|v| v.to_string()),
            action,
        });
        return Ok(None);
    };
    rep.version = Some(version.to_string());
    ctx.emit(Event::Plan {
        component: name.to_string(),
        current: rep.current_before.clone(),
        newest: Some(version.to_string()),
        action: format!("install {version}"),
    });
    Ok(Some(version))
}
