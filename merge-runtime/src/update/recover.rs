//! Going back: finishing an activation a killed run left in the journal
//! ([`recover`]), and `sysext rollback NAME` ([`rollback`]): make the
//! previous instance current again and record the current version as
//! failed.

use sysupdate::Version;

use crate::lock::Lock;

use super::activate::finish_activation;
use super::context::{current_version, load_targets, now_usec, open_ctx, require_root, Ctx};
use super::definitions;
use super::error::{ComponentError, UpdateError};
use super::options::UpdateOptions;
use super::report::{ComponentReport, Event, Outcome};
use super::revert::finish_rollback;
use super::state::{Activation, ComponentState, LinkChange, StateFile};
use super::target::{find_link, Instance, Target};

/// Finishes an activation that a killed run left in the journal; returns
/// what was done. `held` is the main lock.
pub(crate) fn recover(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: Activation,
    held: &Lock,
) -> Result<String, ComponentError> {
    let v = act.version.to_string();
    let failed_before = ctx.state.component(name).is_failed(&act.version);
    let mut now = Vec::new();
    for ch in &act.links {
        let link = find_link(targets, &ch.link);
        now.push(match link {
            Some(l) => l.read().map_err(|source| ComponentError::Io {
                context: format!("reading {}", ch.link),
                source,
            })?,
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
        finish_rollback(ctx, name, targets, &act, failed_before, held)?;
        return Ok(format!("version {v}: {action}"));
    }
    match finish_activation(ctx, name, targets, &act, held) {
        Ok(o) => Ok(format!("version {v}: {action}: {o:?}").to_lowercase()),
        Err(e) => Ok(format!(
            "version {v}: {action}: {:?}: {}",
            e.outcome(),
            crate::chain::text(&e)
        )),
    }
}

/// `sysext rollback NAME`: makes the previous instance current again,
/// records the current version as failed (so updates skip it), refreshes.
pub fn rollback(
    opts: &UpdateOptions,
    name: &str,
    obs: &mut dyn FnMut(&Event),
) -> Result<ComponentReport, UpdateError> {
    if opts.refresh {
        require_root(
            "roll back (it refreshes the merged extensions; --no-refresh only flips the link)",
        )?;
    }
    definitions::check_name(name)?;
    let mut ctx = open_ctx(opts, obs)?;
    let _update_lock = ctx.update_lock()?;
    ctx.state = StateFile::load(&ctx.root)?;
    let rb = |e: ComponentError| UpdateError::Rollback {
        component: name.to_string(),
        source: Box::new(e),
    };
    let (_comp, targets) = load_targets(&ctx, name).map_err(rb)?;
    let lock = ctx.main_lock().map_err(rb)?;
    let mut rep = ComponentReport::new(name);
    rep.current_before = current_version(&ctx, &targets).map(|v| v.to_string());
    let reason = "rolled back by hand (sysext rollback)".to_string();
    let act = match ctx.state.component(name).activating {
        // An interrupted activation: roll it back.
        Some(act) => act,
        None => {
            let act = current_activation(&ctx, name, &targets).map_err(rb)?;
            ctx.emit(Event::RollingBack {
                component: name.to_string(),
                version: act.version.to_string(),
                reason: reason.clone(),
            });
            act
        }
    };
    let mut c = ctx.state.component(name);
    c.mark_failed(&act.version, &reason, now_usec());
    // Journal it, so a kill in the middle is finished by the next run.
    c.activating = Some(act.clone());
    ctx.state.put(name, c)?;
    finish_rollback(&mut ctx, name, &targets, &act, true, &lock).map_err(rb)?;
    rep.version = Some(act.version.to_string());
    rep.current_after = current_version(&ctx, &targets).map(|v| v.to_string());
    ctx.emit(Event::Done {
        component: name.to_string(),
        outcome: Outcome::RolledBack,
    });
    Ok(rep.end(Outcome::RolledBack, Some(reason)))
}

/// The activation that undoing the current version means: each link
/// from its current instance back to the previous one.
fn current_activation(
    ctx: &Ctx,
    name: &str,
    targets: &[Target],
) -> Result<Activation, ComponentError> {
    let mut links = Vec::new();
    let mut failing: Option<Version> = None;
    let cstate = ctx.state.component(name);
    for t in targets {
        let Some(link) = &t.link else {
            continue;
        };
        let cur = t
            .current(&ctx.root)
            .ok_or_else(|| ComponentError::NoCurrent {
                link: link.path.clone(),
                dir: t.transfer.target_path.to_string(),
            })?;
        let prev =
            previous_instance(ctx, &cstate, t, &cur).ok_or_else(|| ComponentError::NoEarlier {
                component: name.to_string(),
                dir: t.transfer.target_path.to_string(),
            })?;
        let io = |what: &str| {
            let context = format!("{what} {}", link.path);
            move |source| ComponentError::Io { context, source }
        };
        links.push(LinkChange {
            link: link.path.clone(),
            // "old" is where we go back to.
            old: Some(link.text_for(&prev.path).map_err(io("linking"))?),
            new: link.read().map_err(io("reading"))?.unwrap_or_default(),
        });
        failing.get_or_insert(cur.version);
    }
    let version = failing.ok_or_else(|| ComponentError::NoLink(name.to_string()))?;
    Ok(Activation {
        version,
        links,
        check: None,
        check_timeout_sec: 0,
        started_usec: now_usec(),
    })
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
