//! The runtime commands: `merge`, `refresh`, `unmerge`, `status`, `list`
//! and `verify`. This module only declares its parts and re-exports their
//! public API:
//! - [`plan`]: the decisions, without side effects (may a command start,
//!   does an image pass, stack order, refusals as [`Refusal`]);
//! - [`stage`]: the staging workspace and mounting images into it;
//! - [`swap`]: building the overlays and the gapless swap / unmerge;
//! - [`state`]: the recorded merge state, current state, fingerprint;
//! - [`commands`]: merge, refresh, unmerge (orchestration);
//! - [`query`]: status, list, verify;
//! - [`options`], [`report`], [`error`]: their inputs, outputs, failures.

pub mod commands;
pub mod error;
pub mod options;
pub mod plan;
pub mod query;
pub mod report;
pub mod stage;
pub mod state;
pub mod swap;

pub use crate::image::{open_image, OpenError, Opened, Stage};
pub use commands::{merge, refresh, refresh_locked, unmerge};
pub use error::RuntimeError;
pub use options::{Options, RUN_DIR};
pub use plan::Refusal;
pub use query::{
    list, status, verify_image, HierarchyStatus, ListEntry, ListReport, StatusReport, VerifyReport,
};
pub use report::{Action, HierarchyReport, ImageReport, MergeReport, Outcome, Swap, UnmergeReport};
pub use state::MergeState;
pub use swap::kernel_has_move_mount_beneath;

/// The runtime's error type under its former name.
pub type Error = RuntimeError;
