//! The shared state of one update command ([`Ctx`]: options, root, state
//! file, feed client, progress observer, locks) and what every step looks
//! up through it: the components to work on, their targets, the current
//! version.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use sysupdate::Version;

use crate::lock;
use crate::root::Root;

use super::definitions::{self, Component};
use super::error::{ComponentError, UpdateError};
use super::feed::Feed;
use super::options::UpdateOptions;
use super::report::Event;
use super::state::StateFile;
use super::target::Target;

pub(crate) fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Shared state of one command.
pub(crate) struct Ctx<'a> {
    pub opts: &'a UpdateOptions,
    pub root: Root,
    pub state: StateFile,
    pub feed: Feed,
    pub spec: sysupdate::specifier::SpecifierContext,
    pub obs: &'a mut dyn FnMut(&Event),
}

impl Ctx<'_> {
    pub fn emit(&mut self, e: Event) {
        (self.obs)(&e);
    }

    /// Takes the main lock (merge, refresh, activation).
    pub fn main_lock(&mut self) -> Result<lock::Lock, ComponentError> {
        let obs = &mut *self.obs;
        lock::acquire_main(self.root.path(), &mut |p| {
            obs(&Event::LockWait {
                path: p.to_path_buf(),
            })
        })
        .map_err(ComponentError::Lock)
    }

    /// Takes the update lock (a whole update or rollback).
    pub fn update_lock(&mut self) -> Result<lock::Lock, UpdateError> {
        let obs = &mut *self.obs;
        lock::acquire_update(self.root.path(), &mut |p| {
            obs(&Event::LockWait {
                path: p.to_path_buf(),
            })
        })
        .map_err(UpdateError::Lock)
    }
}

pub(crate) fn require_root(what: &'static str) -> Result<(), UpdateError> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(UpdateError::NotPrivileged(what))
    }
}

pub(crate) fn open_ctx<'a>(
    opts: &'a UpdateOptions,
    obs: &'a mut dyn FnMut(&Event),
) -> Result<Ctx<'a>, UpdateError> {
    let root = Root::open(&opts.runtime.root).map_err(|source| UpdateError::Root {
        path: opts.runtime.root.clone(),
        source,
    })?;
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
pub(crate) fn select_components(ctx: &Ctx, names: &[String]) -> Result<Vec<String>, UpdateError> {
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
        return Err(UpdateError::NoComponents {
            root: ctx.root.path().to_path_buf(),
            dirs: definitions::DEFINITION_DIRS.join(", "),
        });
    }
    Ok(names)
}

/// The component's definitions and the targets of its transfers.
pub(crate) fn load_targets(
    ctx: &Ctx,
    name: &str,
) -> Result<(Component, Vec<Target>), ComponentError> {
    let comp = definitions::load(&ctx.root, name, ctx.opts.definitions.as_deref(), &ctx.spec)?;
    let targets = comp
        .transfers
        .iter()
        .map(|t| Target::open(&ctx.root, t))
        .collect::<io::Result<Vec<_>>>()
        .map_err(ComponentError::Target)?;
    Ok((comp, targets))
}

/// The target whose link decides the current version.
pub(crate) fn primary(targets: &[Target]) -> Option<&Target> {
    targets.iter().find(|t| t.link.is_some())
}

pub(crate) fn current_version(ctx: &Ctx, targets: &[Target]) -> Option<Version> {
    match primary(targets) {
        Some(t) => t.current(&ctx.root).map(|i| i.version),
        None => targets
            .first()
            .and_then(|t| t.instances().ok())
            .and_then(|v| v.into_iter().next())
            .map(|i| i.version),
    }
}
