//! The steps activation and recovery share: pointing the links of an
//! activation forward or back, refreshing the merged set (with the main
//! lock the caller holds), and ending an activation — remembering the
//! previous targets on success ([`finalize`]), or recording the version as
//! failed and restoring the previous image ([`roll_back`],
//! [`finish_rollback`]).

use crate::lock::Lock;
use crate::runtime::{self, MergeReport, RuntimeError};

use super::context::{now_usec, Ctx};
use super::error::{ComponentError, RollbackCause};
use super::report::Event;
use super::state::{Activation, StateError};
use super::target::{find_link, Target};

/// Points every link of `act` at its new (`forward`) or old target.
pub(crate) fn set_links(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: &Activation,
    forward: bool,
) -> Result<(), ComponentError> {
    for ch in &act.links {
        let Some(link) = find_link(targets, &ch.link) else {
            continue;
        };
        let text = if forward {
            Some(ch.new.as_str())
        } else {
            ch.old.as_deref()
        };
        let io = |source| ComponentError::Io {
            context: format!("pointing {} at {}", ch.link, text.unwrap_or("nothing")),
            source,
        };
        if link.read().map_err(io)?.as_deref() != text {
            link.set(text).map_err(io)?;
        }
        ctx.emit(Event::LinkFlipped {
            component: name.to_string(),
            link: ch.link.clone(),
            target: text.map(str::to_string),
        });
    }
    Ok(())
}

/// Refreshes the merged set under the main lock `held`.
pub(crate) fn refresh(ctx: &mut Ctx, name: &str, held: &Lock) -> Result<MergeReport, RuntimeError> {
    ctx.emit(Event::RefreshStart {
        component: name.to_string(),
    });
    let r = runtime::refresh_locked(&ctx.opts.runtime, held)?;
    ctx.emit(Event::RefreshDone {
        component: name.to_string(),
        action: format!("{:?}", r.action).to_lowercase(),
    });
    Ok(r)
}

/// The activation succeeded: remember the previous targets, clear the
/// journal.
pub(crate) fn finalize(ctx: &mut Ctx, name: &str, act: &Activation) -> Result<(), StateError> {
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

/// Records the version as failed, points the links back, refreshes; always
/// ends in [`ComponentError::RolledBack`] (or the error that stopped it).
pub(crate) fn roll_back(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: &Activation,
    cause: RollbackCause,
    held: &Lock,
) -> ComponentError {
    let reason = cause.to_string();
    ctx.emit(Event::RollingBack {
        component: name.to_string(),
        version: act.version.to_string(),
        reason: reason.clone(),
    });
    let mut c = ctx.state.component(name);
    c.mark_failed(&act.version, &reason, now_usec());
    if let Err(e) = ctx.state.put(name, c) {
        return e.into();
    }
    if let Err(e) = finish_rollback(ctx, name, targets, act, true, held) {
        return e;
    }
    ComponentError::RolledBack {
        version: act.version.clone(),
        cause,
    }
}

/// Links back to the old targets, refresh, clear the journal; with
/// `was_current`, remember the rolled-back targets as the previous ones.
pub(crate) fn finish_rollback(
    ctx: &mut Ctx,
    name: &str,
    targets: &[Target],
    act: &Activation,
    was_current: bool,
    held: &Lock,
) -> Result<(), ComponentError> {
    set_links(ctx, name, targets, act, false)?;
    let r = if ctx.opts.refresh {
        refresh(ctx, name, held).err()
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
    ctx.state.put(name, c)?;
    match r {
        Some(e) => Err(ComponentError::RestoreRefresh(Box::new(e))),
        None => Ok(()),
    }
}
